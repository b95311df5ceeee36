"""The connections to one etcd endpoint, speaking its JSON gateway (``/v3/...``).

:class:`GatewayClient` is what the request paths hold for an endpoint: :meth:`call`
sends one unary request on one of a few pooled connections (HTTP/1.1 carries one
request at a time), :meth:`stream` gives a streamed answer (a watch) a connection of
its own. With a user configured, :meth:`connect` authenticates and every request
carries the token. :meth:`close` drops every connection at once, which ends the calls
and streams still waiting on them (they see :class:`ConnectionClosedUnderCall`): that
is how failover takes a watch off a member that stopped answering.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, final

import anyio

from pgcm_common._etcd.codec import JsonObject, decode_body, encode_body
from pgcm_common._etcd.failures import (
    ConnectionClosedUnderCall,
    GatewayError,
    Status,
    TransportError,
)
from pgcm_common._etcd.http import HttpConnection, Response, open_connection
from pgcm_common._etcd.settings import EtcdEndpoint, EtcdSettings
from pgcm_common._etcd.transport import authenticate_request

__all__ = ["GatewayClient", "JsonLines", "token_of"]

# Idle connections kept per endpoint. Unary calls are short and mostly one at a time
# (the daemons run a watch and a few writes); hedges and probes dial their own.
_POOL_SIZE = 2
# One watch response is a batch of events; etcd splits batches long before this.
_MAX_LINE = 16 * 1024 * 1024


@final
class GatewayClient:
    """The connections to one endpoint: pooled ones for calls, one per stream."""

    def __init__(
        self,
        endpoint: EtcdEndpoint,
        settings: EtcdSettings,
        tls: ssl.SSLContext | None,
        *,
        index: int,
    ) -> None:
        self.endpoint = endpoint
        self.index = index  # position in EtcdSettings.endpoints
        self._tls = tls
        self._dial_timeout_s = settings.dial_timeout.total_seconds()
        self._timeout_s = settings.request_timeout.total_seconds()
        self._user = authenticate_request(settings)
        self._token: str | None = None
        self._idle: list[HttpConnection] = []
        self._open: set[HttpConnection] = set()  # idle, busy and streaming alike
        self._closed = False

    async def connect(self) -> None:
        """Open the first connection and authenticate if a user is configured.

        On failure every connection is closed.

        Raises:
            TimeoutError: no connection within ``dial_timeout``, or no answer in time.
            OSError, TransportError: the connection (or its TLS handshake) failed.
            GatewayError: etcd refused the credentials.
        """
        try:
            if self._user is None:
                self._checkin(await self._dial())
            else:
                self._token = token_of(await self.call("/v3/auth/authenticate", self._user))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Drop every connection, ending the calls and streams waiting on them."""
        self._closed = True
        self._idle.clear()
        for connection in list(self._open):
            connection.close()
        self._open.clear()

    async def call(
        self, path: str, message: Mapping[str, Any], *, timeout_s: float | None = None
    ) -> JsonObject:
        """Send one request and return etcd's answer, within ``request_timeout``.

        Raises:
            GatewayError: etcd answered with an error.
            TimeoutError: no answer within ``timeout_s`` (default ``request_timeout``).
            OSError, TransportError: the connection failed.
            ConnectionClosedUnderCall: :meth:`close` was called meanwhile.
        """
        body = encode_body(message)
        with anyio.fail_after(self._timeout_s if timeout_s is None else timeout_s):
            connection = self._reusable_idle() or await self._dial()
            try:
                response = await connection.post(path, body, self._headers())
            except BaseException:
                self._discard(connection)
                raise
        self._checkin(connection)
        return _answer(response)

    @asynccontextmanager
    async def stream(self, path: str, message: Mapping[str, Any]) -> AsyncIterator[JsonLines]:
        """Send one request on a connection of its own and yield its streamed answer.

        Entering waits for the answer's headers; the caller bounds that wait.

        Raises:
            GatewayError: etcd refused the request.
            OSError, TransportError: the connection failed.
            ConnectionClosedUnderCall: :meth:`close` was called meanwhile.

        Cancellation:
            Leaving closes the connection, which ends the stream on etcd's side.
        """
        connection = await self._dial()
        try:
            status = await connection.send(path, encode_body(message), self._headers())
            if status != 200:  # noqa: PLR2004 - HTTP OK
                chunks = []
                while (chunk := await connection.receive()) is not None:
                    chunks.append(chunk)
                raise _answer_error(Response(status, b"".join(chunks)))
            yield JsonLines(connection)
        finally:
            self._discard(connection)

    def _headers(self) -> list[tuple[str, str]]:
        # etcd reads the token from the "authorization" metadata the gateway forwards.
        return [] if self._token is None else [("Authorization", self._token)]

    async def _dial(self) -> HttpConnection:
        if self._closed:
            raise ConnectionClosedUnderCall(f"etcd connection to {self.endpoint} closed")
        with anyio.fail_after(self._dial_timeout_s):
            connection = await open_connection(self.endpoint, self._tls)
        if self._is_closed():  # closed while we dialled
            connection.close()
            raise ConnectionClosedUnderCall(f"etcd connection to {self.endpoint} closed")
        self._open.add(connection)
        return connection

    def _reusable_idle(self) -> HttpConnection | None:
        """Return an idle connection still open at both ends, closing the others."""
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable:
                return connection
            self._discard(connection)
        return None

    def _is_closed(self) -> bool:
        # A method, not the attribute: mypy would keep the narrowing across an await.
        return self._closed

    def _checkin(self, connection: HttpConnection) -> None:
        if connection.reusable and not self._closed and len(self._idle) < _POOL_SIZE:
            self._idle.append(connection)
        else:
            self._discard(connection)

    def _discard(self, connection: HttpConnection) -> None:
        connection.close()
        self._open.discard(connection)


@final
class JsonLines:
    """A streamed answer of the gateway: one JSON object per line."""

    def __init__(self, connection: HttpConnection) -> None:
        self._connection = connection
        self._buffer = bytearray()

    async def read(self) -> JsonObject:
        """Return the next message's ``result``.

        Raises:
            GatewayError: etcd ended the stream with an error.
            TransportError: the stream ended or broke, or sent something else.
            ConnectionClosedUnderCall: the connection was closed by this side.
        """
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > _MAX_LINE:
                self._connection.close()
                raise TransportError(
                    f"a streamed line from {self._connection.endpoint} is too long"
                )
            chunk = await self._connection.receive()
            if chunk is None:
                raise TransportError(f"stream from {self._connection.endpoint} ended")
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        message = decode_body(line)
        if "error" in message:
            raise _gateway_error(message) or TransportError(f"stream error: {line[:200]!r}")
        result = message.get("result")
        if not isinstance(result, dict):
            raise TransportError(f"not a streamed result: {line[:200]!r}")
        return result


def token_of(answer: JsonObject) -> str:
    """Return the token of an ``AuthenticateResponse``.

    Raises:
        TransportError: the answer has none.
    """
    token = answer.get("token")
    if not isinstance(token, str) or not token:
        raise TransportError("etcd answered authenticate without a token")
    return token


def _answer(response: Response) -> JsonObject:
    if response.status == 200:  # noqa: PLR2004 - HTTP OK
        return decode_body(response.body)
    raise _answer_error(response)


# etcd (3.4.10 and later) answers this, as plain text, to a client certificate whose
# subject has a CommonName: its gateway cannot apply CommonName-as-user authentication.
_COMMON_NAME_REFUSED = b"CommonName of client sending a request against gateway"


def _answer_error(response: Response) -> Exception:
    """Return the error for a non-200 answer: etcd's own, or a transport failure."""
    if response.body.startswith(_COMMON_NAME_REFUSED):
        # Every member refuses it alike: an error to fix, not an endpoint to skip.
        return GatewayError(
            Status.PERMISSION_DENIED,
            "etcd's JSON gateway refuses client certificates with a CommonName in their"
            ' subject; set [etcd] transport = "auto" (or "grpc"), or use a certificate'
            " without one (cert_file)",
        )
    try:
        error = _gateway_error(decode_body(response.body))
    except TransportError:
        error = None
    # Not the gateway's error body (a proxy, or TLS expected): the endpoint is not usable.
    return error or TransportError(f"HTTP {response.status}: {response.body[:200]!r}")


def _gateway_error(message: Mapping[str, Any]) -> GatewayError | None:
    """Return the gateway's error in ``message`` (or its ``error`` object), if it is one."""
    inner = message.get("error")
    if isinstance(inner, dict):
        message = inner  # a streamed error: {"error": {"code": .., "message": ..}}
    code = message.get("code")
    if isinstance(code, bool) or not isinstance(code, int):
        return None
    text = message.get("message") or message.get("error") or ""
    return GatewayError(code, str(text))
