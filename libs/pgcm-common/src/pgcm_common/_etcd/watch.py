"""A watch that survives restarts, hangs and compaction.

:func:`follow_keys` keeps a watch open and hands each event to a callback in its own
task: on a broken stream it re-watches from the last seen revision + 1 (the store moves
to another endpoint on its own); on compaction it re-lists the keys and continues from
the listing's revision. Every event passes a :class:`RevisionGate`, so the consumer
never sees a replay. :func:`watch_keys` runs it in a background task and yields the
events as a stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import timedelta

import anyio
import structlog
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from pgcm_common._etcd.gate import RevisionGate
from pgcm_common._etcd.model import (
    Deleted,
    EtcdCompacted,
    EtcdStore,
    KeyValue,
    WatchEvent,
    WatchHandle,
)
from pgcm_common.backoff import Backoff
from pgcm_common.errors import EtcdError

__all__ = ["EventSink", "follow_keys", "watch_keys"]

log = structlog.get_logger()

# Re-watch delays. Jittered: a restarted etcd member drops every proxy's watch at the
# same moment, and without jitter they would all come back in lock step.
_REWATCH_FIRST = timedelta(milliseconds=200)
_REWATCH_MAX = timedelta(seconds=2)

EventSink = Callable[[WatchEvent], Awaitable[None]]


async def follow_keys(
    store: EtcdStore,
    key_or_prefix: bytes,
    start_revision: int,
    deliver: EventSink,
    *,
    prefix: bool = False,
    known_keys: Iterable[bytes] = (),
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Watch like :func:`watch_keys`, awaiting ``deliver(event)`` for each event, until cancelled.

    ``deliver`` runs in this task, right after the event is read: no hand-over to
    another task, which matters where the time from an etcd put to its effect is the
    product (pgcm-proxy). The next event is read once ``deliver`` returns.
    ``task_status.started()`` is called once the first watch is established.

    Raises:
        Whatever ``deliver`` raises; etcd failures are retried, never raised.

    Cancellation:
        Closes the watch.
    """
    pump = _Pump(store, key_or_prefix, prefix=prefix, next_revision=start_revision, deliver=deliver)
    pump.seed_live_keys(frozenset(known_keys))
    await pump.run(task_status)


@asynccontextmanager
async def watch_keys(
    store: EtcdStore,
    key_or_prefix: bytes,
    start_revision: int,
    *,
    prefix: bool = False,
    known_keys: Iterable[bytes] = (),
    buffer: int = 256,
) -> AsyncIterator[MemoryObjectReceiveStream[WatchEvent]]:
    """Watch a key (or every key under a prefix) from ``start_revision`` until exit.

    Yields a stream of :class:`KeyValue` (put) and :class:`Deleted` events in revision
    order per key, each at most once. Use ``start_revision = listing.revision + 1`` after
    reading the current state, or 0 for "from now"; pass that listing's keys as
    ``known_keys`` so that a key deleted while the watch was compacted away is still
    reported as :class:`Deleted`. Entering returns once the first watch is established
    (bounded by the caller's ``fail_after``).

    Raises:
        EtcdError: the first watch cannot be opened and the caller's deadline passed
            (as ``TimeoutError`` from the caller's scope); later failures are retried.

    Cancellation:
        Leaving the block cancels the background task and closes the stream.
    """
    send, receive = anyio.create_memory_object_stream[WatchEvent](buffer)

    async def pump(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with send:
            try:
                await follow_keys(
                    store,
                    key_or_prefix,
                    start_revision,
                    send.send,
                    prefix=prefix,
                    known_keys=known_keys,
                    task_status=task_status,
                )
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return  # the consumer went away: nothing left to deliver to

    async with anyio.create_task_group() as tg:
        await tg.start(pump)
        try:
            with receive:
                yield receive
        finally:
            tg.cancel_scope.cancel()


class _Pump:
    def __init__(
        self,
        store: EtcdStore,
        key: bytes,
        *,
        prefix: bool,
        next_revision: int,
        deliver: EventSink,
    ) -> None:
        self._store = store
        self._key = key
        self._prefix = prefix
        self._next = next_revision
        self._deliver_to = deliver
        self._gate = RevisionGate()
        self._live: set[bytes] = set()
        self._log = log.bind(key=key.decode(errors="replace"), prefix=prefix)

    def seed_live_keys(self, keys: frozenset[bytes]) -> None:
        """Remember keys the caller already knows exist (from its own listing)."""
        self._live.update(keys)

    async def run(self, task_status: TaskStatus[None]) -> None:
        started = False
        retry = Backoff(initial=_REWATCH_FIRST, maximum=_REWATCH_MAX)
        while True:
            try:
                async with self._store.open_watch(
                    self._key, prefix=self._prefix, start_revision=self._next
                ) as watch:
                    if not started:
                        started = True
                        task_status.started()
                    elif retry.attempt:
                        self._log.info(
                            "etcd.watch.restart",
                            revision=self._next,
                            msg="watch re-established from the last seen revision + 1",
                        )
                    retry.reset()
                    if self._next == 0:
                        # Watching "from now": pin where "now" was, so a re-watch after
                        # a failure does not skip what happened meanwhile.
                        self._next = watch.created_revision + 1
                    await self._follow(watch)
            except EtcdCompacted as exc:
                self._log.warning(
                    "etcd.watch.compacted",
                    revision=self._next,
                    compact_revision=exc.compact_revision,
                    msg="history compacted; re-listing",
                )
                try:
                    await self._relist()
                except EtcdError as relist_exc:
                    await self._backoff(relist_exc, retry)
            except EtcdError as exc:
                await self._backoff(exc, retry)

    async def _follow(self, watch: WatchHandle) -> None:
        while True:
            batch = await watch.read()
            for event in batch.events:
                await self._deliver(event)
                self._next = max(self._next, event.mod_revision + 1)
            if not batch.events:
                # A progress notification: nothing we watch changed up to here. (Event
                # batches may stop short of their header revision: only empty ones count.)
                self._next = max(self._next, batch.revision + 1)

    async def _backoff(self, exc: EtcdError, retry: Backoff) -> None:
        delay = retry.next_delay()
        self._log.warning(
            "etcd.watch.error",
            error=str(exc),
            attempt=retry.attempt,
            retry_in=delay,
            revision=self._next,
            msg="watch broken; re-watching",
        )
        await anyio.sleep(delay)

    async def _relist(self) -> None:
        listing = await self._store.get_prefix(self._key)
        items = [kv for kv in listing.items if self._prefix or kv.key == self._key]
        present = {kv.key for kv in items}
        for kv in items:
            await self._deliver(kv)
        for gone in sorted(self._live - present):
            await self._deliver(Deleted(key=gone, mod_revision=listing.revision))
        self._next = listing.revision + 1
        self._log.info("etcd.watch.relist", revision=listing.revision, keys=len(items))

    async def _deliver(self, event: WatchEvent) -> None:
        if not self._gate.admit(event):
            return
        if isinstance(event, KeyValue):
            self._live.add(event.key)
        else:
            self._live.discard(event.key)
        await self._deliver_to(event)
