"""The TLS context of etcd connections, built from the settings' CA and client files."""

from __future__ import annotations

import ssl

from pgcm_common._etcd.settings import EtcdSettings
from pgcm_common.errors import EtcdError

__all__ = ["client_context"]


def client_context(settings: EtcdSettings) -> ssl.SSLContext | None:
    """Return the TLS context ``settings`` ask for, or None for plain text.

    The server's certificate is verified against ``ca_file`` (the system's CAs without
    one) and must name the endpoint's host; ``cert_file``/``key_file`` are presented
    when the server asks for a client certificate. Reads files: call it off the loop.

    Raises:
        EtcdError: a TLS file cannot be read or is not a certificate or key.
    """
    if not settings.use_tls:
        return None
    try:
        context = ssl.create_default_context(
            cafile=None if settings.ca_file is None else str(settings.ca_file)
        )
        if settings.cert_file is not None and settings.key_file is not None:
            context.load_cert_chain(str(settings.cert_file), str(settings.key_file))
    except OSError as exc:  # ssl.SSLError included: a file that is not PEM
        raise EtcdError(f"cannot read etcd TLS files: {exc}") from exc
    # etcd serves gRPC and the JSON gateway on one port: ask for HTTP/1.1 explicitly.
    context.set_alpn_protocols(["http/1.1"])
    return context
