"""Lease requests on one endpoint: grant, refresh once, revoke.

Each function is one attempt on one :class:`EndpointClient`; the store runs it through
failover (grant, revoke) or hedging (a refresh may safely be sent twice). A lease etcd
no longer knows surfaces as :class:`EtcdLeaseExpired`, here and on writes that carry one.
"""

from __future__ import annotations

from datetime import timedelta

from pgcm_common._etcd.codec import integer, obj
from pgcm_common._etcd.failures import Status, status
from pgcm_common._etcd.model import EtcdLeaseExpired, Lease, lease_seconds
from pgcm_common._etcd.transport import EndpointClient

__all__ = ["grant", "keep_alive_once", "raise_lease_error", "revoke"]


def raise_lease_error(exc: Exception, lease: int) -> None:
    """Raise :class:`EtcdLeaseExpired` if ``exc`` is etcd not finding ``lease`` (if any).

    Raises:
        EtcdLeaseExpired: ``lease`` is set and etcd answered NOT_FOUND.
    """
    if lease and status(exc) == Status.NOT_FOUND:
        raise EtcdLeaseExpired(lease) from exc


async def grant(client: EndpointClient, ttl: timedelta) -> Lease:
    """Grant a lease of ``ttl`` (rounded to whole seconds, at least 1)."""
    granted = await client.call("/v3/lease/grant", {"TTL": str(lease_seconds(ttl))})
    return Lease(id=integer(granted, "ID"), ttl=timedelta(seconds=integer(granted, "TTL")))


async def keep_alive_once(client: EndpointClient, lease_id: int) -> timedelta:
    """Refresh the lease once and return its new TTL.

    The gateway answers the keepalive stream's one request with one ``result`` and
    ends it; a lease etcd does not know comes back with no TTL.

    Raises:
        EtcdLeaseExpired: the lease no longer exists.
    """
    reply = await client.call("/v3/lease/keepalive", {"ID": str(lease_id)})
    ttl = integer(obj(reply, "result"), "TTL")
    if ttl <= 0:
        raise EtcdLeaseExpired(lease_id)
    return timedelta(seconds=ttl)


async def revoke(client: EndpointClient, lease_id: int) -> None:
    """Revoke the lease and delete its keys; a lease already gone is fine."""
    try:
        await client.call("/v3/lease/revoke", {"ID": str(lease_id)})
    except Exception as exc:
        if status(exc) != Status.NOT_FOUND:
            raise
