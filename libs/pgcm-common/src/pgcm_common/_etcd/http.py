"""One HTTP/1.1 connection to one etcd member, over asyncio streams, framed by h11.

HTTP/1.1 carries one request at a time on a connection, so :class:`GatewayClient`
(:mod:`gateway`) keeps a few per endpoint for unary calls and gives each watch a
connection of its own. h11 does the framing (headers, ``Content-Length``, chunked
bodies, trailers); this module only moves bytes between it and the socket and turns
every way a connection can fail into :class:`TransportError`, or
:class:`ConnectionClosedUnderCall` when this side closed it under a waiting request.

Cancelling :meth:`HttpConnection.receive` loses nothing (the bytes stay buffered), so a
watch may wait for its next line under a timeout. A request cancelled anywhere else
leaves the connection in the middle of an exchange: :attr:`HttpConnection.reusable` is
then false and its owner closes it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import final

import h11

from pgcm_common._etcd.failures import ConnectionClosedUnderCall, TransportError
from pgcm_common._etcd.settings import EtcdEndpoint

__all__ = ["HttpConnection", "Response", "open_connection"]

_READ_SIZE = 64 * 1024
# A unary answer is a few KB; a listing of every key under a prefix stays far below
# this. Anything larger is not an answer pgcm asked for: refuse it, do not buffer it.
_MAX_BODY = 64 * 1024 * 1024


@final
@dataclass(frozen=True, slots=True)
class Response:
    """A complete answer: its HTTP status and body."""

    status: int
    body: bytes


async def open_connection(endpoint: EtcdEndpoint, tls: ssl.SSLContext | None) -> HttpConnection:
    """Connect (and shake hands, with TLS) to ``endpoint``; the caller bounds the wait.

    Raises:
        OSError: the connection or the TLS handshake failed.
    """
    reader, writer = await asyncio.open_connection(
        endpoint.host,
        endpoint.port,
        ssl=tls,
        server_hostname=endpoint.host if tls is not None else None,
    )
    return HttpConnection(endpoint, reader, writer)


@final
class HttpConnection:
    """One connection: a request, then its answer read whole or as a stream of chunks."""

    def __init__(
        self, endpoint: EtcdEndpoint, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.endpoint = endpoint
        self._reader = reader
        self._writer = writer
        self._h11 = h11.Connection(h11.CLIENT)
        self._host = endpoint.target
        self._closed = False

    @property
    def closed(self) -> bool:
        """Return whether the connection was closed (by :meth:`close` or a failure)."""
        return self._closed

    @property
    def reusable(self) -> bool:
        """Return whether the last exchange completed cleanly and another may follow.

        A connection the peer closed meanwhile (etcd restarted, an idle timeout) is not:
        its end of stream is already buffered, and a request sent on it would fail.
        """
        return not self._closed and self._h11.our_state is h11.IDLE and not self._reader.at_eof()

    def close(self) -> None:
        """Drop the connection at once, ending any request waiting on it.

        Aborted, not closed gracefully: a frozen peer would never read a TLS close.
        """
        if self._closed:
            return
        self._closed = True
        self._writer.transport.abort()
        self._writer.close()

    async def post(self, path: str, body: bytes, headers: Sequence[tuple[str, str]]) -> Response:
        """Send one POST and return its whole answer.

        Raises:
            TransportError: the connection failed or the answer is not HTTP/1.1.
            ConnectionClosedUnderCall: :meth:`close` was called meanwhile.
        """
        status = await self.send(path, body, headers)
        chunks: list[bytes] = []
        size = 0
        while (chunk := await self.receive()) is not None:
            size += len(chunk)
            if size > _MAX_BODY:
                self.close()
                raise TransportError(f"answer from {self.endpoint} exceeds {_MAX_BODY} bytes")
            chunks.append(chunk)
        return Response(status, b"".join(chunks))

    async def send(self, path: str, body: bytes, headers: Sequence[tuple[str, str]]) -> int:
        """Send one POST and wait for the answer's status line and headers.

        Read the body with :meth:`receive`.

        Raises:
            TransportError: the connection failed or the answer is not HTTP/1.1.
            ConnectionClosedUnderCall: :meth:`close` was called meanwhile.
        """
        request = h11.Request(
            method="POST",
            target=path,
            headers=[
                ("Host", self._host),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                *headers,
            ],
        )
        with self._failures("send"):
            data = self._h11.send(request) or b""
            data += self._h11.send(h11.Data(data=body)) or b""
            data += self._h11.send(h11.EndOfMessage()) or b""
            self._writer.write(data)
            await self._writer.drain()
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Response):
                return int(event.status_code)
            if not isinstance(event, h11.InformationalResponse):
                raise self._broken(f"unexpected {type(event).__name__} before the answer")

    async def receive(self) -> bytes | None:
        """Return the next piece of the answer's body, or None once it is complete.

        Raises:
            TransportError: the connection failed or the answer is not HTTP/1.1.
            ConnectionClosedUnderCall: :meth:`close` was called meanwhile.
        """
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage):
                self._cycle()
                return None
            raise self._broken(f"unexpected {type(event).__name__} in the answer")

    def _cycle(self) -> None:
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
        else:  # e.g. "Connection: close": this connection carries no more requests
            self.close()

    async def _next_event(self) -> h11.Event:
        while True:
            with self._failures("receive"):
                event = self._h11.next_event()
                if event is h11.NEED_DATA:
                    # b"" at the end of the stream tells h11 the peer closed it.
                    self._h11.receive_data(await self._reader.read(_READ_SIZE))
                    continue
            if isinstance(event, h11.Event) and not isinstance(event, h11.ConnectionClosed):
                return event
            raise self._broken("closed by the peer")

    def _broken(self, what: str) -> Exception:
        if self._closed:
            return ConnectionClosedUnderCall(f"etcd connection to {self.endpoint} closed")
        self.close()
        return TransportError(f"etcd connection to {self.endpoint}: {what}")

    @contextmanager
    def _failures(self, what: str) -> Iterator[None]:
        """Turn socket and framing errors inside one step into this connection's errors."""
        try:
            yield
        except (TransportError, ConnectionClosedUnderCall):
            raise
        except (OSError, EOFError, h11.ProtocolError) as exc:
            raise self._broken(f"{what} failed: {str(exc) or type(exc).__name__}") from exc
