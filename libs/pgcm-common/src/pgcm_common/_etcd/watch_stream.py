"""One etcd watch stream on aetcd's generated ``WatchStub``, with no task of its own.

aetcd's own watcher runs unowned asyncio tasks, a request queue and callbacks, which
pgcm forbids (every task needs an owner that outlives it). Here the bidi stream is
driven by its reader: ``write`` the create request, ``read`` responses. A stream that
breaks drops its connection from the :class:`EndpointPool`, so the next watch (which
``watch_keys`` opens after a backoff) goes to the next endpoint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import NoReturn, Protocol, final

import aetcd.rpc
import aetcd.utils
import anyio
import grpc.aio

from pgcm_common._etcd.channel import ChannelClient
from pgcm_common._etcd.endpoints import EndpointPool
from pgcm_common._etcd.failover import call_in_turn
from pgcm_common._etcd.failures import (
    MemberUnresponsive,
    details,
    foreign_cancellation_as_unavailable,
)
from pgcm_common._etcd.model import Deleted, EtcdCompacted, KeyValue, WatchBatch, WatchEvent
from pgcm_common._etcd.stall import StallGuard
from pgcm_common.errors import EtcdError, EtcdUnavailable

__all__ = ["WatchStream", "open_watch_stream"]

_EVENT_DELETE = 1  # mvccpb.Event.EventType.DELETE


@asynccontextmanager
async def open_watch_stream(
    pool: EndpointPool,
    guard: StallGuard,
    key: bytes,
    *,
    prefix: bool,
    start_revision: int,
    request_timeout: timedelta,
) -> AsyncIterator[WatchStream]:
    """Open one watch stream on the connection in use; enter once etcd confirmed it.

    Setting up a watch is not hedged (two streams would deliver every event twice):
    like a write, it is abandoned on a member that answers neither it nor the probe.

    Raises:
        EtcdCompacted: ``start_revision`` is older than the compacted history.
        EtcdUnavailable: the stream could not be opened on any endpoint.

    Cancellation:
        Leaving cancels the gRPC stream.
    """
    client = await call_in_turn(pool, guard, "watch", _itself)
    try:
        call = client.watchstub.Watch(metadata=client.metadata)
    except grpc.aio.UsageError as exc:  # closed meanwhile by another task's failure
        raise EtcdUnavailable(f"etcd watch: connection to {client.endpoint} closed") from exc
    watch = WatchStream(pool, client, call)
    try:
        create = aetcd.rpc.WatchCreateRequest(
            key=key,
            range_end=aetcd.utils.prefix_range_end(key) if prefix else b"",
            start_revision=start_revision,
            progress_notify=True,
        )
        try:
            await guard.run(
                client,
                lambda: watch.establish(
                    aetcd.rpc.WatchRequest(create_request=create),
                    request_timeout.total_seconds(),
                ),
            )
        except MemberUnresponsive as exc:
            await pool.drop(client, exc)
            raise EtcdUnavailable(f"etcd watch: {exc}") from exc
        yield watch
    finally:
        call.cancel()


async def _itself(client: ChannelClient) -> ChannelClient:
    return client


class _StreamCall(Protocol):
    async def write(self, request: object) -> None: ...
    async def read(self) -> object: ...
    def cancel(self) -> bool: ...


@final
class WatchStream:
    """One established watch stream on one connection (a :class:`WatchHandle`)."""

    def __init__(self, pool: EndpointPool, client: ChannelClient, call: _StreamCall) -> None:
        self._pool = pool
        self._client = client
        self._call = call
        self.created_revision = 0

    async def establish(self, request: object, timeout_s: float) -> None:
        """Send the create request and wait for etcd to confirm it."""
        try:
            with anyio.fail_after(timeout_s):
                try:
                    await self._call.write(request)
                except (grpc.aio.AioRpcError, grpc.aio.BaseError) as exc:
                    await self._broken(exc)
                while True:
                    response = await self._next()
                    self._check_compacted(response)
                    if response.created:
                        self.created_revision = int(response.header.revision)
                        return
        except TimeoutError as exc:
            await self._pool.drop(self._client, exc)
            raise EtcdUnavailable(f"etcd watch not confirmed by {self._client.endpoint}") from exc

    async def read(self) -> WatchBatch:
        """Wait for the next batch of events (or a progress notification).

        Raises:
            EtcdCompacted: the requested history is gone.
            EtcdUnavailable: the stream broke.
        """
        response = await self._next()
        self._check_compacted(response)
        if response.canceled:
            raise EtcdError(f"etcd cancelled the watch: {response.cancel_reason}")
        events: list[WatchEvent] = []
        for event in response.events:
            if event.type == _EVENT_DELETE:
                events.append(Deleted(bytes(event.kv.key), int(event.kv.mod_revision)))
            else:
                events.append(KeyValue.from_etcd(event.kv))
        return WatchBatch(revision=int(response.header.revision), events=tuple(events))

    async def _next(self) -> _WatchResponse:
        try:
            with foreign_cancellation_as_unavailable("watch", self._client.endpoint):
                response = await self._call.read()
        except (grpc.aio.AioRpcError, grpc.aio.BaseError) as exc:
            await self._broken(exc)
        if response is grpc.aio.EOF:
            raise EtcdUnavailable(f"etcd watch on {self._client.endpoint} ended")
        watch_response: _WatchResponse = response  # type: ignore[assignment]  # aetcd's protobuf is untyped
        return watch_response

    async def _broken(self, exc: Exception) -> NoReturn:
        await self._pool.drop(self._client, exc)
        raise EtcdUnavailable(
            f"etcd watch on {self._client.endpoint} broke: {details(exc)}"
        ) from exc

    @staticmethod
    def _check_compacted(response: _WatchResponse) -> None:
        if response.compact_revision:
            raise EtcdCompacted(int(response.compact_revision))


class _WatchResponse(Protocol):
    created: bool
    canceled: bool
    cancel_reason: str
    compact_revision: int
    events: list[_PbEvent]
    header: _PbHeader


class _PbHeader(Protocol):
    revision: int


class _PbEvent(Protocol):
    type: int
    kv: _PbKv


class _PbKv(Protocol):
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int
