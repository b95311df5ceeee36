"""A lease-based etcd lock with keepalive and a fencing token.

Built on one transaction rather than a client library's lock helper (one such helper
enters the critical section after its timeout without holding the lock and never
refreshes its lease):

* acquire: grant a short lease, keep it alive from an owned task, then
  ``put key=holder-json if the key is absent`` attached to the lease. When someone else
  holds it, watch the key until it is deleted (its holder released, or its lease
  expired because the holder died) and try again. The caller bounds the wait.
* the fencing token is the key's create revision: it only grows, so a resource that
  remembers the highest token it saw can refuse a stale holder.
* release: revoke the lease (deletes the key at once).
* if the lease cannot be kept alive until it would expire, the holder is told:
  ``lost`` is set and every registered cancel scope is cancelled.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Self, final

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from pgcm_common._etcd.model import (
    Absent,
    Deleted,
    EtcdCompacted,
    EtcdLeaseExpired,
    EtcdStore,
    KeyValue,
    Lease,
)
from pgcm_common.backoff import Backoff
from pgcm_common.errors import EtcdError, EtcdUnavailable

__all__ = ["EtcdLock", "LockHolder", "LockStatus", "lock_key", "read_lock_status"]

log = structlog.get_logger()


def _retry_backoff() -> Backoff:
    """Delays between attempts while etcd is unavailable: exponential with jitter.

    Operators starting switchovers from several hosts at once, or one CLI retrying through
    an etcd leader election, should not all retry in the same instant.
    """
    return Backoff(initial=timedelta(milliseconds=200), maximum=timedelta(seconds=2))


def lock_key(namespace: str) -> bytes:
    """Return the lock key of a namespace: ``<namespace>/lock``."""
    return f"{namespace.rstrip('/')}/lock".encode()


@final
@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds the lock, as stored in the lock key's value (JSON)."""

    holder: str
    hostname: str
    pid: int
    acquired_at: datetime

    @classmethod
    def current(cls, holder: str) -> LockHolder:
        """Describe this process as the holder."""
        return cls(holder, socket.gethostname(), os.getpid(), datetime.now(UTC))

    def to_json(self) -> bytes:
        """Serialise for the lock key's value."""
        return json.dumps(
            {
                "holder": self.holder,
                "hostname": self.hostname,
                "pid": self.pid,
                "acquired_at": self.acquired_at.isoformat(),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> LockHolder:
        """Parse the lock key's value.

        Raises:
            EtcdError: the value is not a holder record.
        """
        try:
            data = json.loads(raw)
            return cls(
                holder=str(data["holder"]),
                hostname=str(data["hostname"]),
                pid=int(data["pid"]),
                acquired_at=datetime.fromisoformat(str(data["acquired_at"])),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise EtcdError(f"lock value is not a holder record: {raw[:200]!r}") from exc


@final
@dataclass(frozen=True, slots=True)
class LockStatus:
    """The lock as ``status`` shows it: holder (None if unreadable) and fencing token."""

    holder: LockHolder | None
    fencing_token: int
    lease: int


async def read_lock_status(store: EtcdStore, key: bytes) -> LockStatus | None:
    """Return who holds the lock at ``key``, or None when it is free.

    Raises:
        EtcdUnavailable: etcd cannot be reached.
    """
    current = await store.get(key)
    if current is None:
        return None
    try:
        holder: LockHolder | None = LockHolder.from_json(current.value)
    except EtcdError:
        holder = None
    return LockStatus(holder, current.create_revision, current.lease)


@final
class EtcdLock(anyio.AsyncContextManagerMixin):
    """A lease-based lock; ``async with`` owns its keepalive task, ``acquire`` takes it.

    Example::

        async with EtcdLock(store, lock_key("/postgres"), ttl=timedelta(seconds=5),
                            holder="failover") as lock:
            with anyio.fail_after(lock_timeout):
                token = await lock.acquire()
            ...  # critical section; watch lock.lost or use lock.cancel_on_loss(scope)
        # leaving releases it (revokes the lease)

    Cancellation:
        Cancelling ``acquire`` revokes the lease it granted; leaving the block releases
        the lock, shielded, within ``release_grace``.
    """

    def __init__(
        self,
        store: EtcdStore,
        key: bytes,
        *,
        ttl: timedelta,
        holder: str,
        release_grace: timedelta = timedelta(seconds=5),
    ) -> None:
        self._store = store
        self._key = key
        self._ttl = ttl
        self._holder = holder
        self._release_grace_s = release_grace.total_seconds()
        self._tg: TaskGroup | None = None
        self._lease: Lease | None = None
        self._keepalive: anyio.CancelScope | None = None
        self._token: int | None = None
        self._lost = anyio.Event()
        self._on_loss: list[anyio.CancelScope] = []
        self._log = log.bind(key=key.decode(errors="replace"), holder=holder)

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[Self]:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield self
            finally:
                with anyio.move_on_after(self._release_grace_s, shield=True):
                    await self.release()
                self._tg = None
                tg.cancel_scope.cancel()

    @property
    def held(self) -> bool:
        """Return whether this lock is held (acquired, not released, not lost)."""
        return self._token is not None and not self._lost.is_set()

    @property
    def fencing_token(self) -> int | None:
        """Return the key's create revision while held: it grows with every new holder."""
        return self._token if self.held else None

    @property
    def lost(self) -> anyio.Event:
        """Return the event set when the lease could not be kept alive while held."""
        return self._lost

    def cancel_on_loss(self, scope: anyio.CancelScope) -> None:
        """Cancel ``scope`` when the lock is lost (at once if already lost)."""
        if self._lost.is_set():
            scope.cancel()
        else:
            self._on_loss.append(scope)

    async def acquire(self) -> int:
        """Wait until the lock is held and return its fencing token.

        Returns only while holding the lock; the caller bounds the wait with
        ``fail_after``.

        Raises:
            EtcdError: the lock is already held by this object, or etcd failed for good
                (the lease expired while waiting).
            RuntimeError: used outside ``async with``.

        Cancellation:
            The lease granted for the attempt is revoked (shielded, bounded).
        """
        if self._tg is None:
            raise RuntimeError("use EtcdLock inside 'async with' before acquire()")
        if self._lease is not None:
            raise EtcdError("lock already acquired (or being acquired) by this EtcdLock")
        self._lost = anyio.Event()
        self._log.info("etcd.lock.acquire.start", msg="acquiring lock")
        lease = await self._grant_lease()
        self._lease = lease
        self._keepalive = anyio.CancelScope()
        await self._tg.start(self._keep_alive, lease, self._keepalive)
        try:
            token = await self._take(lease)
        except BaseException:
            with anyio.move_on_after(self._release_grace_s, shield=True):
                await self.release()
            raise
        self._token = token
        self._log.info(
            "etcd.lock.acquire", fencing_token=token, lease=lease.id, msg="lock acquired"
        )
        return token

    async def release(self) -> None:
        """Release the lock by revoking its lease; releasing a free lock is fine.

        A failed revoke is logged: the key then disappears when the lease expires.
        """
        lease, self._lease = self._lease, None
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        token, self._token = self._token, None
        if lease is None:
            return
        try:
            await self._store.revoke_lease(lease.id)
        except EtcdError as exc:
            self._log.warning(
                "etcd.lock.release.error",
                error=str(exc),
                msg="could not revoke lease; the lock frees itself when the lease expires",
            )
        if token is not None:
            self._log.info("etcd.lock.release", fencing_token=token, msg="lock released")

    async def _take(self, lease: Lease) -> int:
        retry = _retry_backoff()
        while True:
            try:
                value = LockHolder.current(self._holder).to_json()
                await self._store.put_if(self._key, value, Absent(), lease=lease.id)
                # Read back instead of trusting put_if's answer: a retried transaction
                # whose first reply was lost reports "failed" although it succeeded.
                current = await self._store.get(self._key)
                if current is not None and current.lease == lease.id:
                    return current.create_revision
                if current is not None:
                    await self._wait_released(current)
                retry.reset()
            except EtcdUnavailable as exc:
                delay = retry.next_delay()
                self._log.warning(
                    "etcd.lock.acquire.error", error=str(exc), attempt=retry.attempt, retry_in=delay
                )
                await anyio.sleep(delay)

    async def _wait_released(self, current: KeyValue) -> None:
        try:
            status = LockHolder.from_json(current.value)
            holder: str | None = f"{status.holder}@{status.hostname}:{status.pid}"
        except EtcdError:
            holder = None
        self._log.info("etcd.lock.wait", current_holder=holder, msg="lock held; waiting")
        try:
            async with self._store.open_watch(
                self._key, prefix=False, start_revision=current.mod_revision + 1
            ) as watch:
                while True:
                    batch = await watch.read()
                    if any(isinstance(event, Deleted) for event in batch.events):
                        return
        except EtcdCompacted:
            return  # the key changed since we read it: look again

    async def _keep_alive(
        self,
        lease: Lease,
        scope: anyio.CancelScope,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        ttl_s = lease.ttl.total_seconds()
        interval_s = max(0.2, ttl_s / 3)
        # Conservative local view of when etcd expires the lease: measured from when a
        # refresh was sent, not when its answer came back.
        expires_at = anyio.current_time() + ttl_s
        with scope:
            task_status.started()
            while True:
                await anyio.sleep(interval_s)
                sent_at = anyio.current_time()
                try:
                    with anyio.fail_after(max(0.05, expires_at - sent_at)):
                        ttl = await self._store.keepalive_lease(lease.id)
                    expires_at = sent_at + ttl.total_seconds()
                except EtcdLeaseExpired:
                    self._mark_lost("lease expired")
                    return
                except (EtcdError, TimeoutError) as exc:
                    self._log.warning(
                        "etcd.lock.keepalive.error", error=str(exc) or type(exc).__name__
                    )
                    if anyio.current_time() >= expires_at:
                        self._mark_lost("lease could not be refreshed before it expired")
                        return

    def _mark_lost(self, reason: str) -> None:
        if self._token is None:
            # Still waiting to acquire: the attempt fails on its own; nobody holding
            # this lock has anything to stop.
            self._log.warning("etcd.lock.lease_lost_while_waiting", reason=reason)
            return
        self._log.error("etcd.lock.lost", fencing_token=self._token, reason=reason)
        self._lost.set()
        scopes, self._on_loss = self._on_loss, []
        for scope in scopes:
            scope.cancel()

    async def _grant_lease(self) -> Lease:
        retry = _retry_backoff()
        while True:
            try:
                return await self._store.grant_lease(self._ttl)
            except EtcdUnavailable as exc:
                delay = retry.next_delay()
                self._log.warning(
                    "etcd.lock.acquire.error", error=str(exc), attempt=retry.attempt, retry_in=delay
                )
                await anyio.sleep(delay)
