"""The etcd side of a switchover: the lock, the published primary and the proxies' acks.

:class:`EtcdCoordinator` implements ``pipeline.Coordinator`` over ``pgcm_common.etcd``:

* the lock is an :class:`~pgcm_common.etcd.EtcdLock` at ``<ns>/lock`` (short TTL,
  keepalive owned by the coordinator's task group), holder ``pgcm-failover@<host>``;
  supervise reads the same key to decide whether a paused PgBouncer is orphaned;
* :meth:`EtcdCoordinator.wait_for_primary` watches ``<ns><master_key>`` until it holds
  the target's address and remembers the revision of that write;
* :meth:`EtcdCoordinator.wait_for_proxy_acks` watches ``<ns>/proxies/`` until every live
  proxy's :class:`~pgcm_common.records.ProxyAck` names the address at a revision at or
  after that write. A proxy whose ack vanishes (its lease expired: the proxy is gone) is
  no longer waited for; a proxy that appears meanwhile is.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Self, final

import anyio
import structlog

from pgcm_common.etcd import Deleted, EtcdLock, EtcdStore, KeyValue, Listing, watch_keys
from pgcm_common.records import KeyLayout, ProxyAck, RecordError

__all__ = ["AckState", "EtcdCoordinator", "default_holder", "read_acks"]

log = structlog.get_logger("pgcm_failover.coordinator")

_NAMES_LOGGED = 10


def default_holder() -> str:
    """Return the lock holder identity of this process: ``pgcm-failover@<host>``."""
    return f"pgcm-failover@{socket.gethostname()}"


@final
@dataclass(frozen=True, slots=True)
class AckState:
    """One live proxy's acknowledgement as last read (``ack`` None: unreadable record)."""

    key: bytes
    ack: ProxyAck | None

    @property
    def proxy_id(self) -> str:
        """Return the proxy's id (from the record, else from the key)."""
        if self.ack is not None:
            return self.ack.proxy_id
        return self.key.rsplit(b"/", 1)[-1].decode(errors="replace")

    def confirms(self, address: str, revision: int) -> bool:
        """Return whether this ack routes to ``address`` as of ``revision`` or later."""
        return self.ack is not None and self.ack.host == address and self.ack.revision >= revision


def _parse_ack(kv: KeyValue) -> AckState:
    try:
        return AckState(kv.key, ProxyAck.from_json(kv.key, kv.value))
    except RecordError as exc:
        log.warning(
            "failover.proxy_ack.invalid", key=kv.key.decode(errors="replace"), error=str(exc)
        )
        return AckState(kv.key, None)


def read_acks(listing: Listing) -> dict[bytes, AckState]:
    """Parse every ack of a ``<ns>/proxies/`` listing (unreadable ones kept as such)."""
    return {kv.key: _parse_ack(kv) for kv in listing.items}


@final
class EtcdCoordinator(anyio.AsyncContextManagerMixin):
    """``pipeline.Coordinator`` over etcd; ``async with`` owns the lock's keepalive task.

    Cancellation:
        Leaving the block releases the lock (shielded, bounded by ``release_grace``).
    """

    def __init__(
        self,
        store: EtcdStore,
        layout: KeyLayout,
        *,
        lock_ttl: timedelta,
        holder: str | None = None,
        release_grace: timedelta = timedelta(seconds=5),
    ) -> None:
        self._store = store
        self._layout = layout
        self._lock_ttl = lock_ttl
        self._holder = holder or default_holder()
        self._release_grace = release_grace
        self._lock: EtcdLock | None = None
        self._primary_revision: int | None = None
        self._pending: tuple[str, ...] = ()
        self._confirmed: tuple[str, ...] = ()
        self._gone: list[str] = []
        self._last_logged = 0

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[Self]:
        lock = EtcdLock(
            self._store,
            self._layout.lock,
            ttl=self._lock_ttl,
            holder=self._holder,
            release_grace=self._release_grace,
        )
        async with lock:
            self._lock = lock
            try:
                yield self
            finally:
                self._lock = None

    @property
    def lock(self) -> EtcdLock:
        """Return the lock (inside ``async with`` only)."""
        if self._lock is None:
            raise RuntimeError("use EtcdCoordinator inside 'async with'")
        return self._lock

    @property
    def primary_revision(self) -> int | None:
        """Return the etcd revision at which the awaited primary address was written."""
        return self._primary_revision

    async def acquire_lock(self) -> None:
        """Take the failover lock, waiting while someone else holds it (caller bounds it).

        Raises:
            EtcdError: etcd failed for good.
        """
        await self.lock.acquire()

    async def release_lock(self) -> None:
        """Give the lock back (revokes its lease; fine when not held)."""
        await self.lock.release()

    async def wait_for_primary(self, address: str) -> None:
        """Return once ``<ns><master_key>`` holds ``address`` (caller bounds the wait).

        Raises:
            EtcdError: the first watch could not be opened.
        """
        key = self._layout.master
        # One read gives both the value and the store revision it was read at; watching
        # from that revision + 1 leaves no window in which a write could slip by. (The
        # prefix also matches "<master>.json": only the exact key counts.)
        listing = await self._store.get_prefix(key)
        current = next((kv for kv in listing.items if kv.key == key), None)
        if current is not None and current.value.decode(errors="replace") == address:
            self._seen_primary(current)
            return
        known = () if current is None else (key,)
        async with watch_keys(self._store, key, listing.revision + 1, known_keys=known) as events:
            async for event in events:
                if isinstance(event, KeyValue) and event.value.decode(errors="replace") == address:
                    self._seen_primary(event)
                    return

    def _seen_primary(self, kv: KeyValue) -> None:
        self._primary_revision = kv.mod_revision
        log.info(
            "failover.etcd.primary",
            address=kv.value.decode(errors="replace"),
            revision=kv.mod_revision,
            msg="etcd names the new primary",
        )

    async def wait_for_proxy_acks(self, address: str) -> Sequence[str]:
        """Return the ids of the live proxies once each acknowledged routing to ``address``.

        Call after :meth:`wait_for_primary` (the acks must be at or after its revision;
        without it any ack naming ``address`` counts). Returns an empty list when no
        proxy is registered at all.

        Raises:
            EtcdError: the first watch could not be opened.
        """
        revision = self._primary_revision or 0
        listing = await self._store.get_prefix(self._layout.proxies_prefix)
        acks = read_acks(listing)
        if self._all_confirm(acks, address, revision):
            return self._acknowledged(acks)
        prefix = self._layout.proxies_prefix
        async with watch_keys(
            self._store,
            prefix,
            listing.revision + 1,
            prefix=True,
            known_keys=[kv.key for kv in listing.items],
        ) as events:
            async for event in events:
                if isinstance(event, Deleted):
                    gone = acks.pop(event.key, None)
                    if gone is not None and not gone.confirms(address, revision):
                        self._gone.append(gone.proxy_id)
                    if gone is not None:
                        log.warning(
                            "failover.proxy.gone",
                            proxy=gone.proxy_id,
                            msg="proxy's ack vanished (lease expired): no longer waiting for it",
                        )
                else:
                    acks[event.key] = _parse_ack(event)
                if self._all_confirm(acks, address, revision):
                    return self._acknowledged(acks)
        raise AssertionError("unreachable: the watch stream ended")  # pragma: no cover

    @property
    def pending_proxies(self) -> Sequence[str]:
        """Return the live proxies that had not confirmed at the last check of the wait."""
        return self._pending

    @property
    def gone_proxies(self) -> Sequence[str]:
        """Return the proxies whose ack vanished (lease expired) before they confirmed."""
        return tuple(self._gone)

    @property
    def confirmed_proxies(self) -> Sequence[str]:
        """Return the live proxies that had confirmed at the last check of the wait."""
        return self._confirmed

    def _all_confirm(self, acks: Mapping[bytes, AckState], address: str, revision: int) -> bool:
        states = acks.values()
        pending = sorted(s.proxy_id for s in states if not s.confirms(address, revision))
        self._pending = tuple(pending)
        self._confirmed = tuple(sorted(s.proxy_id for s in states if s.confirms(address, revision)))
        if pending and len(pending) != self._last_logged:
            # Once per change of the count, at most ten names: with a hundred proxies a
            # list per acknowledgement would log thousands of names per switchover.
            self._last_logged = len(pending)
            log.info("failover.proxy.wait", pending_count=len(pending),
                     pending=pending[:_NAMES_LOGGED], address=address)  # fmt: skip
        return not pending

    @staticmethod
    def _acknowledged(acks: Mapping[bytes, AckState]) -> list[str]:
        ids = sorted(state.proxy_id for state in acks.values())
        log.info("failover.proxy.acknowledged", proxies=ids)
        return ids
