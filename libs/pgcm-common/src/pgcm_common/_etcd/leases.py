"""Lease requests on one connection: grant, refresh once, revoke.

Each function is one attempt on one :class:`ChannelClient`; the store runs it through
failover (grant, revoke) or hedging (a refresh may safely be sent twice). A lease etcd
no longer knows surfaces as :class:`EtcdLeaseExpired`, here and on writes that carry one.
"""

from __future__ import annotations

from datetime import timedelta

import aetcd.exceptions
import aetcd.rpc
import grpc
import grpc.aio

from pgcm_common._etcd.channel import ChannelClient
from pgcm_common._etcd.failures import status
from pgcm_common._etcd.model import EtcdLeaseExpired, Lease, lease_seconds

__all__ = ["grant", "keep_alive_once", "raise_lease_error", "revoke"]


def raise_lease_error(exc: Exception, lease: int) -> None:
    """Raise :class:`EtcdLeaseExpired` if ``exc`` is etcd not finding ``lease`` (if any).

    Raises:
        EtcdLeaseExpired: ``lease`` is set and etcd answered NOT_FOUND.
    """
    if lease and status(exc) == grpc.StatusCode.NOT_FOUND:
        raise EtcdLeaseExpired(lease) from exc


async def grant(client: ChannelClient, ttl: timedelta) -> Lease:
    """Grant a lease of ``ttl`` (rounded to whole seconds, at least 1)."""
    granted = await client.lease(lease_seconds(ttl))
    return Lease(id=int(granted.id), ttl=timedelta(seconds=int(granted.ttl)))


async def keep_alive_once(client: ChannelClient, lease_id: int, timeout_s: float) -> timedelta:
    """Refresh the lease once on its own keepalive stream and return its new TTL.

    Raises:
        EtcdLeaseExpired: the lease no longer exists.
    """
    call = client.leasestub.LeaseKeepAlive(timeout=timeout_s, metadata=client.metadata)
    try:
        await call.write(aetcd.rpc.LeaseKeepAliveRequest(ID=lease_id))
        await call.done_writing()
        reply = await call.read()
    finally:
        call.cancel()
    if reply is grpc.aio.EOF or int(reply.TTL) <= 0:
        raise EtcdLeaseExpired(lease_id)
    return timedelta(seconds=int(reply.TTL))


async def revoke(client: ChannelClient, lease_id: int) -> None:
    """Revoke the lease and delete its keys; a lease already gone is fine."""
    try:
        await client.revoke_lease(lease_id)
    except aetcd.exceptions.ClientError as exc:
        if status(exc) != grpc.StatusCode.NOT_FOUND:
            raise
