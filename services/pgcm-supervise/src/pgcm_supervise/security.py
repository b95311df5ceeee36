"""Who may call the failover API: server TLS, client certificates, bearer tokens.

* TLS: an :class:`ssl.SSLContext` offering ALPN ``h2`` (Go's and grpcio's clients refuse
  a TLS server that does not), TLS 1.2 or newer.
* mTLS: with a CA file, a client certificate chaining to it is required at handshake.
* Tokens: ``authorization: Bearer <token>`` metadata, compared in constant time with
  every configured token; the matching token's *name* identifies the caller in logs.
* A non-loopback listener must authenticate callers (mutual TLS or a token), and
  tokens need TLS there, unless ``insecure`` is set: an API that can pause every
  client is never exposed, nor its tokens sent in clear text, by accident.
"""

from __future__ import annotations

import hmac
import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import final

from grpclib import GRPCError
from grpclib.const import Status
from grpclib.protocol import Peer
from multidict import MultiDict
from pydantic import SecretStr

from pgcm_common.errors import ConfigError

__all__ = [
    "Authenticator",
    "SecurityOptions",
    "check_exposure",
    "is_loopback",
    "peer_common_name",
    "server_ssl_context",
]

_BEARER = "bearer "


@final
@dataclass(frozen=True, slots=True)
class SecurityOptions:
    """How the API authenticates callers.

    Attributes:
        tls_cert_file: server certificate chain (PEM); with ``tls_key_file`` enables TLS.
        tls_key_file: the certificate's private key (PEM).
        tls_client_ca_file: CA bundle client certificates must chain to (mTLS).
        tokens: ``name -> token``; when not empty every call must carry one of them.
        insecure: allow a non-loopback address without authentication, or with
            tokens but without TLS.
    """

    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    tokens: Mapping[str, SecretStr] = field(default_factory=lambda: MappingProxyType({}))
    insecure: bool = False

    def __post_init__(self) -> None:
        """Reject combinations that cannot work.

        Raises:
            ConfigError: names the offending key.
        """
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("tls_cert_file", "tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ConfigError("tls_client_ca_file", "client certificates need server TLS")
        for name, token in self.tokens.items():
            if not name or not token.get_secret_value():
                raise ConfigError("tokens", "token names and tokens must not be empty")

    @property
    def tls(self) -> bool:
        """Return whether the listener speaks TLS."""
        return self.tls_cert_file is not None


def is_loopback(host: str) -> bool:
    """Return whether ``host`` is a loopback address (``localhost`` included)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # wildcards and other names count as exposed


def check_exposure(host: str, security: SecurityOptions) -> None:
    """Refuse a non-loopback listener without authentication, or with tokens but no TLS.

    A caller on another host must be authenticated (mutual TLS or a token), and a token
    must travel inside TLS; ``insecure`` lifts both rules.

    Raises:
        ConfigError: naming ``insecure``.
    """
    if security.insecure or is_loopback(host):
        return
    if not (security.tokens or security.tls_client_ca_file is not None):
        raise ConfigError(
            "insecure",
            f"refusing to serve the failover API on non-loopback {host!r} without "
            "authentication; configure tls_client_ca_file (mutual TLS) or a token with "
            "tls_cert_file/tls_key_file, or set insecure = true",
        )
    if security.tokens and not security.tls:
        raise ConfigError(
            "insecure",
            f"refusing to accept bearer tokens in clear text on non-loopback {host!r}; "
            "configure tls_cert_file/tls_key_file, or set insecure = true",
        )


def server_ssl_context(security: SecurityOptions) -> ssl.SSLContext | None:
    """Build the server TLS context (blocking file reads: call it in a worker thread).

    Raises:
        ConfigError: a certificate, key or CA file cannot be loaded.
    """
    if security.tls_cert_file is None or security.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(security.tls_cert_file, security.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("tls_cert_file", f"cannot load certificate/key: {exc}") from exc
    # HTTP/2 over TLS must be negotiated by ALPN; Go and grpcio clients insist on it.
    context.set_alpn_protocols(["h2"])
    if security.tls_client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=security.tls_client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("tls_client_ca_file", f"cannot load CA file: {exc}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def peer_common_name(peer: Peer) -> str | None:
    """Return the subject CN of the verified client certificate, if any."""
    cert = peer.cert()
    if not cert:
        return None
    subject = cert.get("subject", ())
    for rdn in subject:
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def _peer_address(peer: Peer) -> str:
    address = peer.addr()
    if address is None:
        return "unknown"
    return f"{address[0]}:{address[1]}"


@final
class Authenticator:
    """Checks a request's credentials and names its caller."""

    def __init__(self, security: SecurityOptions) -> None:
        self._tokens = tuple(
            (name, token.get_secret_value().encode()) for name, token in security.tokens.items()
        )

    def identify(self, metadata: MultiDict[str | bytes], peer: Peer) -> str:
        """Return the caller's identity: ``token:<name>``, ``cert:<CN>`` or ``peer:<addr>``.

        Raises:
            GRPCError: UNAUTHENTICATED when tokens are configured and the request does
                not carry one of them.
        """
        common_name = peer_common_name(peer)
        if self._tokens:
            name = self._token_name(metadata)
            if name is None:
                raise GRPCError(Status.UNAUTHENTICATED, "missing or invalid bearer token")
            return f"token:{name}" + (f" cert:{common_name}" if common_name else "")
        if common_name is not None:
            return f"cert:{common_name}"
        return f"peer:{_peer_address(peer)}"

    def _token_name(self, metadata: MultiDict[str | bytes]) -> str | None:
        header = metadata.get("authorization")
        if isinstance(header, bytes):
            header = header.decode("utf-8", "replace")
        if not header or not header.lower().startswith(_BEARER):
            return None
        presented = header[len(_BEARER) :].strip().encode()
        found: str | None = None
        # Compare with every token, always: the time taken does not reveal which matched.
        for name, token in self._tokens:
            if hmac.compare_digest(presented, token) and found is None:
                found = name
        return found
