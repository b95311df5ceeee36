"""One etcd watch: a streamed answer of the gateway's ``/v3/watch``, read by its owner.

The create request is the request body; etcd answers with one JSON line per watch
response (``created`` first) on a connection of the watch's own, until the connection
is closed. There is no task here: :meth:`WatchStream.read` reads the next line. A
stream that breaks drops its endpoint's client from the :class:`EndpointPool`, so the
next watch (which ``watch_keys`` opens after a backoff) goes to the next endpoint.

etcd sends nothing on an idle watch, and a frozen member's kernel keeps the connection
open, so silence alone cannot tell. After ``keepalive_time`` of silence the member must
answer a local read (:func:`stall.answers`) within ``keepalive_timeout``, or the watch
is reported broken.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn, final

import anyio

from pgcm_common._etcd.codec import (
    JsonObject,
    b64,
    header_revision,
    integer,
    key_value,
    obj,
    prefix_range_end,
    unb64,
)
from pgcm_common._etcd.endpoints import EndpointPool
from pgcm_common._etcd.failover import call_in_turn
from pgcm_common._etcd.failures import MemberUnresponsive, TransportError, details, retryable
from pgcm_common._etcd.model import Deleted, EtcdCompacted, WatchBatch, WatchEvent
from pgcm_common._etcd.stall import StallGuard, answers
from pgcm_common._etcd.transport import AnswerStream, EndpointClient
from pgcm_common.errors import EtcdError, EtcdUnavailable

__all__ = ["WatchStream", "WatchTimings", "open_watch_stream"]


@final
@dataclass(frozen=True, slots=True)
class WatchTimings:
    """How long a watch may take to be confirmed, and to prove its member alive.

    Attributes:
        request_timeout: bound on setting the watch up.
        idle: silence after which the member is probed (``keepalive_time``).
        probe: how long the probe may take (``keepalive_timeout``).
    """

    request_timeout: timedelta
    idle: timedelta
    probe: timedelta


@asynccontextmanager
async def open_watch_stream(
    pool: EndpointPool,
    guard: StallGuard,
    key: bytes,
    *,
    prefix: bool,
    start_revision: int,
    timings: WatchTimings,
) -> AsyncIterator[WatchStream]:
    """Open one watch on the endpoint in use; enter once etcd confirmed it.

    Setting up a watch is not hedged (two streams would deliver every event twice):
    like a write, it is abandoned on a member that answers neither it nor the probe.

    Raises:
        EtcdCompacted: ``start_revision`` is older than the compacted history.
        EtcdUnavailable: the stream could not be opened on any endpoint.

    Cancellation:
        Leaving closes the watch's connection.
    """
    client = await call_in_turn(pool, guard, "watch", _itself)
    create: JsonObject = {
        "key": b64(key),
        "start_revision": str(start_revision),
        "progress_notify": True,
    }
    if prefix:
        create["range_end"] = b64(prefix_range_end(key))
    async with AsyncExitStack() as stack:

        async def establish() -> WatchStream:
            with anyio.fail_after(timings.request_timeout.total_seconds()):
                lines = await stack.enter_async_context(
                    client.stream("/v3/watch", {"create_request": create})
                )
                watch = WatchStream(pool, client, lines, timings)
                await watch.confirmed()
                return watch

        try:
            watch = await guard.run(client, establish)
        except EtcdError:
            raise  # etcd's answer (EtcdCompacted), or no endpoint left (EtcdUnavailable)
        except Exception as exc:
            if not retryable(exc):
                raise EtcdError(f"etcd watch failed: {details(exc)}") from exc
            pool.drop(client, exc)
            raise EtcdUnavailable(
                f"etcd watch not confirmed by {client.endpoint}: {details(exc)}"
            ) from exc
        yield watch


async def _itself(client: EndpointClient) -> EndpointClient:
    return client


@final
class WatchStream:
    """One established watch stream on one connection (a :class:`WatchHandle`)."""

    def __init__(
        self, pool: EndpointPool, client: EndpointClient, lines: AnswerStream, timings: WatchTimings
    ) -> None:
        self._pool = pool
        self._client = client
        self._lines = lines
        self._timings = timings
        self.created_revision = 0

    async def confirmed(self) -> None:
        """Wait for etcd to confirm the watch (its ``created`` response).

        Raises:
            EtcdCompacted: the start revision was compacted.
        """
        while True:
            response = await self._lines.read()
            self._check_compacted(response)
            if response.get("created") is True:
                self.created_revision = header_revision(response)
                return

    async def read(self) -> WatchBatch:
        """Wait for the next batch of events (or a progress notification).

        Raises:
            EtcdCompacted: the requested history is gone.
            EtcdUnavailable: the stream broke, or its member stopped answering.
        """
        response = await self._next()
        try:
            return self._batch(response)
        except TransportError as exc:
            self._broken(exc)

    def _batch(self, response: JsonObject) -> WatchBatch:
        self._check_compacted(response)
        if response.get("canceled") is True:
            raise EtcdError(f"etcd cancelled the watch: {response.get('cancel_reason', '')}")
        raw_events = response.get("events", [])
        if not isinstance(raw_events, list) or not all(isinstance(e, dict) for e in raw_events):
            raise TransportError(f"malformed watch events: {raw_events!r:.200}")
        events: list[WatchEvent] = []
        for raw in raw_events:
            kv = obj(raw, "kv")
            if raw.get("type") == "DELETE":
                events.append(Deleted(unb64(kv, "key"), integer(kv, "mod_revision")))
            else:
                events.append(key_value(kv))
        return WatchBatch(revision=header_revision(response), events=tuple(events))

    async def _next(self) -> JsonObject:
        idle_s = self._timings.idle.total_seconds()
        while True:
            with anyio.move_on_after(idle_s):
                try:
                    return await self._lines.read()
                except EtcdUnavailable:
                    raise  # closed by this side: whoever closed it dropped it
                except Exception as exc:  # noqa: BLE001 - classified in _broken
                    self._broken(exc)
            if not await answers(self._client, self._timings.probe):
                self._broken(
                    MemberUnresponsive(self._client.endpoint, self._timings.probe.total_seconds())
                )

    def _broken(self, exc: Exception) -> NoReturn:
        if not retryable(exc):
            raise EtcdError(
                f"etcd watch on {self._client.endpoint} failed: {details(exc)}"
            ) from exc
        self._pool.drop(self._client, exc)
        raise EtcdUnavailable(
            f"etcd watch on {self._client.endpoint} broke: {details(exc)}"
        ) from exc

    @staticmethod
    def _check_compacted(response: JsonObject) -> None:
        compact_revision = integer(response, "compact_revision")
        if compact_revision:
            raise EtcdCompacted(compact_revision)
