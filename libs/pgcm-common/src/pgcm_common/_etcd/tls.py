"""The TLS context of etcd connections, and which transport the client certificate needs."""

from __future__ import annotations

import ssl

from pgcm_common._etcd.certs import subject_has_common_name
from pgcm_common._etcd.settings import EtcdSettings
from pgcm_common._etcd.transport import TransportName
from pgcm_common.errors import EtcdError

__all__ = ["choose_transport", "client_context"]

# etcd serves gRPC (HTTP/2) and the JSON gateway (HTTP/1.1) on one port: ALPN says which.
_ALPN: dict[TransportName, str] = {"gateway": "http/1.1", "grpc": "h2"}


def choose_transport(settings: EtcdSettings) -> TransportName:
    """Return the transport ``settings.transport`` names, resolving ``auto``.

    ``auto`` is gRPC exactly when ``cert_file`` holds a certificate whose subject has a
    CommonName (etcd's gateway refuses those), else the gateway. Reads the file: call it
    off the loop.

    Raises:
        EtcdError: ``cert_file`` cannot be read or holds no certificate.
    """
    if settings.transport != "auto":
        return settings.transport
    if settings.cert_file is None:
        return "gateway"
    try:
        common_name = subject_has_common_name(settings.cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise EtcdError(
            f"cannot read the etcd client certificate {settings.cert_file}: {exc}"
        ) from exc
    return "grpc" if common_name else "gateway"


def client_context(settings: EtcdSettings, transport: TransportName) -> ssl.SSLContext | None:
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
    context.set_alpn_protocols([_ALPN[transport]])
    return context
