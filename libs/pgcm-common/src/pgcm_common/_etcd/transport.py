"""The seam between the request paths and the two ways of reaching an etcd member.

Everything above it (failover, hedged reads, the stall probe, the watch loop, the lock
and :mod:`codec`) sees an :class:`EndpointClient`: one unary call with a message in
etcd's proto3 JSON shape (field names as in etcd's ``.proto``, bytes in base64, int64
as decimal strings, defaults left out) and the answer in the same shape, and a
streamed answer (a watch) read one message at a time. Requests are named by their JSON
gateway path (``/v3/kv/range``). :class:`gateway.GatewayClient` speaks etcd's JSON
gateway over HTTP/1.1; :class:`grpc_client.GrpcClient` speaks etcd's gRPC API over
HTTP/2 with grpclib, for client certificates the gateway refuses (docs/adr/0006).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol

from pgcm_common._etcd.codec import JsonObject
from pgcm_common._etcd.settings import EtcdEndpoint, EtcdSettings

__all__ = [
    "AnswerStream",
    "ClientFactory",
    "EndpointClient",
    "TransportName",
    "authenticate_request",
]

TransportName = Literal["gateway", "grpc"]


class AnswerStream(Protocol):
    """A streamed answer (a watch), one message at a time."""

    async def read(self) -> JsonObject:
        """Return the next message.

        Raises:
            GatewayError: etcd ended the stream with an error.
            TransportError: the stream ended or broke, or sent something else.
            ConnectionClosedUnderCall: the client was closed by this side.
        """
        ...


class EndpointClient(Protocol):
    """The connection(s) to one etcd endpoint, as the request paths use them."""

    @property
    def endpoint(self) -> EtcdEndpoint:
        """Return the endpoint this client talks to."""
        ...

    @property
    def index(self) -> int:
        """Return the endpoint's position in ``EtcdSettings.endpoints``."""
        ...

    async def connect(self) -> None:
        """Connect (and authenticate if a user is configured); on failure close."""
        ...

    def close(self) -> None:
        """Drop every connection, ending the calls and streams waiting on them."""
        ...

    async def call(
        self, path: str, message: Mapping[str, Any], *, timeout_s: float | None = None
    ) -> JsonObject:
        """Send one request and return etcd's answer, within ``request_timeout``."""
        ...

    def stream(
        self, path: str, message: Mapping[str, Any]
    ) -> AbstractAsyncContextManager[AnswerStream]:
        """Send one request and yield its streamed answer; leaving ends the stream."""
        ...


class ClientFactory(Protocol):
    """Builds the client of one endpoint (``index`` in the settings' endpoints)."""

    def __call__(
        self,
        endpoint: EtcdEndpoint,
        settings: EtcdSettings,
        tls: ssl.SSLContext | None,
        *,
        index: int,
    ) -> EndpointClient:
        """Return a client that is not connected yet."""
        ...


def authenticate_request(settings: EtcdSettings) -> dict[str, str] | None:
    """Return the ``/v3/auth/authenticate`` message for the configured user, if any.

    Both transports send it once per connection and then carry the token it returns.
    """
    if settings.username is None or settings.password is None:
        return None
    return {"name": settings.username, "password": settings.password.get_secret_value()}
