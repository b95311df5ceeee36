"""The client side of SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL uses it.

PostgreSQL sends an empty user name in the SCRAM messages (the startup packet already
carried it). The client announces no channel binding (``n,,``), which PostgreSQL and
PgBouncer accept also over TLS. Passwords are used as UTF-8 without SASLprep, which is
exact for ASCII passwords; document non-ASCII passwords as unsupported.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import final

__all__ = ["MECHANISM", "ScramClient", "ScramError"]

MECHANISM = "SCRAM-SHA-256"
_GS2_HEADER = "n,,"
_NONCE_BYTES = 18


class ScramError(Exception):
    """The server's SCRAM messages are malformed or do not prove it knows the secret.

    The wire client turns it into its caller's authentication error.
    """


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


def _parse_attributes(message: str) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for part in message.split(","):
        key, sep, value = part.partition("=")
        if not sep or len(key) != 1:
            raise ScramError(f"malformed SCRAM message from server: {message!r}")
        attributes[key] = value
    return attributes


@final
@dataclass(slots=True)
class ScramClient:
    """One SCRAM-SHA-256 exchange: first message, final message, server check."""

    password: str
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(_NONCE_BYTES))
    _client_first_bare: str = field(init=False, default="")
    _server_signature: bytes = field(init=False, default=b"")

    def client_first(self) -> bytes:
        """Return the client-first-message."""
        self._client_first_bare = f"n=,r={self.nonce}"
        return (_GS2_HEADER + self._client_first_bare).encode()

    def client_final(self, server_first: bytes) -> bytes:
        """Return the client-final-message (with the proof) for the server-first-message.

        Raises:
            ScramError: The server's message is malformed or its nonce is not ours.
        """
        text = server_first.decode()
        attributes = _parse_attributes(text)
        try:
            server_nonce, salt_b64, iterations = attributes["r"], attributes["s"], attributes["i"]
            salt = base64.b64decode(salt_b64, validate=True)
            rounds = int(iterations)
        except (KeyError, ValueError) as exc:
            raise ScramError(f"malformed SCRAM server-first-message: {text!r}") from exc
        if not server_nonce.startswith(self.nonce):
            raise ScramError("SCRAM server nonce does not extend the client nonce")
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, rounds)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        channel_binding = base64.b64encode(_GS2_HEADER.encode()).decode()
        without_proof = f"c={channel_binding},r={server_nonce}"
        auth_message = f"{self._client_first_bare},{text},{without_proof}".encode()
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify_server_final(self, server_final: bytes) -> None:
        """Check the server's signature, so a server that does not know the secret fails.

        Raises:
            ScramError: The signature is missing or wrong.
        """
        attributes = _parse_attributes(server_final.decode())
        if "e" in attributes:
            raise ScramError(f"SCRAM authentication failed: {attributes['e']}")
        try:
            signature = base64.b64decode(attributes["v"], validate=True)
        except (KeyError, ValueError) as exc:
            raise ScramError("malformed SCRAM server-final-message") from exc
        if not self._server_signature or not hmac.compare_digest(signature, self._server_signature):
            raise ScramError("SCRAM server signature does not match")
