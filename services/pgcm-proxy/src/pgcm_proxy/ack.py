"""The proxy's acknowledgement ``<ns>/proxies/<id>``, kept on an etcd lease.

Failover waits until every live proxy acknowledges the new primary, so the key must
vanish with the proxy: it is attached to a lease kept alive at a third of its TTL.
A lost lease (etcd restarted without us for longer than the TTL, or revoked) is
re-granted and the last acknowledgement written again. A clean exit revokes the lease,
deleting the key at once; a killed proxy's key expires after the TTL.
"""

from __future__ import annotations

from datetime import timedelta
from typing import final

import anyio
import structlog

from pgcm_common.errors import EtcdError
from pgcm_common.etcd import EtcdLeaseExpired, EtcdStore
from pgcm_common.records import ProxyAck

__all__ = ["AckPublisher"]

log = structlog.get_logger("pgcm.proxy.ack")


@final
class AckPublisher:
    """Publish :class:`ProxyAck` records under one key, on a lease this object owns."""

    def __init__(self, store: EtcdStore, key: bytes, ttl: timedelta) -> None:
        """Write acknowledgements to ``key`` on a lease of ``ttl``."""
        self._store = store
        self._key = key
        self._ttl = ttl
        self._lease: int | None = None
        self._last: ProxyAck | None = None
        self._lock = anyio.Lock()

    @property
    def last(self) -> ProxyAck | None:
        """Return the last acknowledgement written."""
        return self._last

    async def publish(self, ack: ProxyAck) -> None:
        """Write ``ack`` on the lease (granting a new one when needed).

        Raises:
            EtcdError: etcd did not take the write; the caller retries.
        """
        async with self._lock:
            if await self._still_current(ack):
                return
            await self._put(ack)
            self._last = ack

    async def _still_current(self, ack: ProxyAck) -> bool:
        """Return whether etcd already holds this host and revision on our live lease.

        The periodic re-verification then costs one read instead of one write.
        """
        last = self._last
        if last is None or self._lease is None:
            return False
        if (last.host, last.revision, last.pgbouncers) != (ack.host, ack.revision, ack.pgbouncers):
            return False
        current = await self._store.get(self._key)
        return current is not None and current.lease == self._lease

    async def _put(self, ack: ProxyAck) -> None:
        for _ in range(2):
            if self._lease is None:
                self._lease = (await self._store.grant_lease(self._ttl)).id
            try:
                await self._store.put(self._key, ack.to_json(), lease=self._lease)
            except EtcdLeaseExpired:
                log.warning("proxy.ack.lease_lost", msg="ack lease gone; granting a new one")
                self._lease = None
                continue
            return
        raise EtcdError("etcd lost two fresh leases in a row")

    async def keep_alive(self) -> None:
        """Refresh the lease every third of its TTL until cancelled.

        A lease found expired is re-granted and the last acknowledgement re-written;
        etcd being unreachable is logged and tried again on the next tick.

        Cancellation:
            Returns nothing to clean up; :meth:`revoke` removes the key.
        """
        period = self._ttl.total_seconds() / 3
        while True:
            await anyio.sleep(period)
            try:
                await self._refresh()
            except EtcdError as exc:
                log.warning("proxy.ack.keepalive_error", error=str(exc), retry_in=period)

    async def _refresh(self) -> None:
        async with self._lock:
            lease = self._lease
            if lease is None:
                return
            try:
                await self._store.keepalive_lease(lease)
            except EtcdLeaseExpired:
                log.warning("proxy.ack.lease_lost", msg="ack lease expired; re-publishing")
                self._lease = None
                if self._last is not None:
                    await self._put(self._last)

    async def revoke(self) -> None:
        """Revoke the lease, deleting the acknowledgement at once.

        Raises:
            EtcdError: etcd did not answer; the key then expires with its TTL.
        """
        lease, self._lease = self._lease, None
        if lease is not None:
            await self._store.revoke_lease(lease)
            log.info("proxy.ack.revoke", msg="acknowledgement withdrawn")
