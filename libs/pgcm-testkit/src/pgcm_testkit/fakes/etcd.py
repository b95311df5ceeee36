"""An in-memory etcd that passes the same contract suite as the real client.

It keeps revisions, history (for watches from a past revision), compaction, leases
and watches the way etcd 3.4 does, and lets a unit test break things on purpose:
:meth:`FakeEtcdStore.break_watches` (a stream drop), :attr:`FakeEtcdStore.unavailable`
(every request fails) and :meth:`FakeEtcdStore.expire_lease`.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from typing import final

import anyio
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from pgcm_common._etcd.model import check_writes, condition_holds, lease_seconds
from pgcm_common.etcd import (
    Condition,
    Deleted,
    EtcdCompacted,
    EtcdLeaseExpired,
    EtcdUnavailable,
    Guard,
    KeyValue,
    Lease,
    Listing,
    TxnResult,
    WatchBatch,
    WatchEvent,
    Write,
)

__all__ = ["FakeEtcdStore"]

_Item = WatchBatch | Exception


@final
class _FakeWatch:
    def __init__(self, key: bytes, *, prefix: bool, start_revision: int, created: int) -> None:
        self.key = key
        self.prefix = prefix
        self.start_revision = start_revision
        self.created_revision = created
        self._send: MemoryObjectSendStream[_Item]
        self._receive: MemoryObjectReceiveStream[_Item]
        self._send, self._receive = anyio.create_memory_object_stream[_Item](math.inf)

    def matches(self, key: bytes) -> bool:
        return key.startswith(self.key) if self.prefix else key == self.key

    def push(self, item: _Item) -> None:
        self._send.send_nowait(item)

    async def read(self) -> WatchBatch:
        item = await self._receive.receive()
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self._send.close()
        self._receive.close()


@final
class FakeEtcdStore:
    """In-memory :class:`pgcm_common.etcd.EtcdStore`."""

    def __init__(self) -> None:
        self.revision = 1  # a fresh etcd is at revision 1
        self.unavailable = False
        self._data: dict[bytes, KeyValue] = {}
        self._history: list[WatchEvent] = []
        self._compacted = 0
        self._leases: dict[int, timedelta] = {}
        self._next_lease = 0x7E57_0000
        self._watches: set[_FakeWatch] = set()

    # -- failure injection ------------------------------------------------------------

    def break_watches(self) -> None:
        """Make every open watch fail as if its stream broke."""
        for watch in self._watches:
            watch.push(EtcdUnavailable("fake: watch stream broken"))

    def expire_lease(self, lease_id: int) -> None:
        """Expire a lease now, deleting its keys (as etcd's lessor does)."""
        self._drop_lease(lease_id)

    @property
    def open_watches(self) -> int:
        """Return the number of open watches."""
        return len(self._watches)

    # -- EtcdStore --------------------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        """See :meth:`EtcdStore.get`."""
        await self._ready()
        return self._data.get(key)

    async def get_prefix(self, prefix: bytes) -> Listing:
        """See :meth:`EtcdStore.get_prefix`."""
        await self._ready()
        items = tuple(kv for key, kv in sorted(self._data.items()) if key.startswith(prefix))
        return Listing(revision=self.revision, items=items)

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """See :meth:`EtcdStore.put`."""
        await self._ready()
        self._put(key, value, lease)
        return self.revision

    async def put_if(
        self, key: bytes, value: bytes, condition: Condition, *, lease: int = 0
    ) -> bool:
        """See :meth:`EtcdStore.put_if`."""
        await self._ready()
        if not condition_holds(condition, self._data.get(key)):
            return False
        self._put(key, value, lease)
        return True

    async def put_all_if(self, guards: Sequence[Guard], writes: Sequence[Write]) -> TxnResult:
        """See :meth:`EtcdStore.put_all_if`."""
        check_writes(writes)
        await self._ready()
        if not all(condition_holds(g.condition, self._data.get(g.key)) for g in guards):
            return TxnResult(succeeded=False, revision=self.revision)
        # etcd checks every lease before applying anything: a bad one writes nothing.
        for write in writes:
            if write.lease and write.lease not in self._leases:
                raise EtcdLeaseExpired(write.lease)
        if writes:
            self.revision += 1
            self._emit(*(self._store(w.key, w.value, w.lease) for w in writes))
        return TxnResult(succeeded=True, revision=self.revision)

    async def delete(self, key: bytes) -> bool:
        """See :meth:`EtcdStore.delete`."""
        await self._ready()
        if key not in self._data:
            return False
        self.revision += 1
        self._delete(key)
        return True

    async def grant_lease(self, ttl: timedelta) -> Lease:
        """See :meth:`EtcdStore.grant_lease`."""
        await self._ready()
        self._next_lease += 1
        granted = timedelta(seconds=lease_seconds(ttl))
        self._leases[self._next_lease] = granted
        return Lease(id=self._next_lease, ttl=granted)

    async def keepalive_lease(self, lease_id: int) -> timedelta:
        """See :meth:`EtcdStore.keepalive_lease`."""
        await self._ready()
        try:
            return self._leases[lease_id]
        except KeyError:
            raise EtcdLeaseExpired(lease_id) from None

    async def revoke_lease(self, lease_id: int) -> None:
        """See :meth:`EtcdStore.revoke_lease`."""
        await self._ready()
        self._drop_lease(lease_id)

    async def compact(self, revision: int) -> None:
        """See :meth:`EtcdStore.compact`."""
        await self._ready()
        self._compacted = max(self._compacted, min(revision, self.revision))
        self._history = [e for e in self._history if e.mod_revision >= self._compacted]

    @asynccontextmanager
    async def open_watch(
        self, key: bytes, *, prefix: bool, start_revision: int
    ) -> AsyncIterator[_FakeWatch]:
        """See :meth:`EtcdStore.open_watch`."""
        await self._ready()
        watch = _FakeWatch(key, prefix=prefix, start_revision=start_revision, created=self.revision)
        if start_revision and start_revision < self._compacted:
            watch.push(EtcdCompacted(self._compacted))
        elif start_revision:
            past = tuple(
                e
                for e in self._history
                if e.mod_revision >= start_revision and watch.matches(e.key)
            )
            if past:
                watch.push(WatchBatch(revision=self.revision, events=past))
        self._watches.add(watch)
        try:
            yield watch
        finally:
            self._watches.discard(watch)
            watch.close()

    # -- internals --------------------------------------------------------------------

    async def _ready(self) -> None:
        await checkpoint()
        if self.unavailable:
            raise EtcdUnavailable("fake: etcd unavailable")

    def _put(self, key: bytes, value: bytes, lease: int) -> None:
        if lease and lease not in self._leases:
            raise EtcdLeaseExpired(lease)
        self.revision += 1
        self._emit(self._store(key, value, lease))

    def _store(self, key: bytes, value: bytes, lease: int) -> KeyValue:
        """Set the key at the current revision (the caller advanced it) and return it."""
        old = self._data.get(key)
        if old is None:
            kv = KeyValue(key, value, self.revision, self.revision, 1, lease)
        else:
            kv = replace(
                old, value=value, mod_revision=self.revision, version=old.version + 1, lease=lease
            )
        self._data[key] = kv
        return kv

    def _delete(self, key: bytes) -> None:
        del self._data[key]
        self._emit(Deleted(key, self.revision))

    def _drop_lease(self, lease_id: int) -> None:
        if self._leases.pop(lease_id, None) is None:
            return
        attached = [key for key, kv in sorted(self._data.items()) if kv.lease == lease_id]
        if attached:
            # etcd deletes a lease's keys in one transaction: one revision for all.
            self.revision += 1
            for key in attached:
                self._delete(key)

    def _emit(self, *events: WatchEvent) -> None:
        """Record events and send them; events of one transaction go in one batch, as etcd does."""
        self._history.extend(events)
        for watch in self._watches:
            seen = tuple(
                e for e in events if watch.matches(e.key) and e.mod_revision >= watch.start_revision
            )
            if seen:
                watch.push(WatchBatch(revision=self.revision, events=seen))
