"""The real etcd store: :class:`GatewayStore` and :func:`open_etcd`.

The store is the :class:`EtcdStore` face over the modules that do the work, and picks
for each request how it may be sent:

* reads (``get``, ``get_prefix``, ``keepalive_lease``) are hedged (:mod:`hedging`): a
  request unanswered for ``hedge_delay`` also goes to the next endpoint, first answer
  wins, and the store moves to the member that answered;
* writes and watch set-ups are never sent twice at once (a write may apply twice): they
  go to one endpoint at a time (:mod:`failover`), abandoned on a member that answers
  neither them nor a liveness probe within ``hedge_delay`` (:mod:`stall`).

The endpoint in use lives in :mod:`endpoints`, its connections in :mod:`gateway` and
:mod:`http` (HTTP/1.1 to etcd's JSON gateway) or :mod:`grpc_client` (etcd's gRPC API,
for client certificates the gateway refuses; ``etcd.transport``), the requests
themselves in :mod:`kv`, :mod:`leases` and :mod:`watch_stream`. See
docs/adr/0006-etcd-json-gateway.md.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import TypeVar, final

import anyio
import structlog

from pgcm_common._etcd import kv, leases
from pgcm_common._etcd.endpoints import EndpointPool
from pgcm_common._etcd.failover import call_in_turn
from pgcm_common._etcd.gateway import GatewayClient
from pgcm_common._etcd.hedging import hedged_read
from pgcm_common._etcd.model import (
    Condition,
    Guard,
    KeyValue,
    Lease,
    Listing,
    TxnResult,
    Write,
)
from pgcm_common._etcd.settings import EtcdEndpoint, EtcdSettings
from pgcm_common._etcd.stall import StallGuard
from pgcm_common._etcd.tls import choose_transport, client_context
from pgcm_common._etcd.transport import ClientFactory, EndpointClient, TransportName
from pgcm_common._etcd.watch_stream import WatchStream, WatchTimings, open_watch_stream
from pgcm_common.errors import EtcdError

__all__ = ["GatewayStore", "open_etcd"]

log = structlog.get_logger()

_T = TypeVar("_T")


@final
class GatewayStore:
    """The real :class:`EtcdStore`: tries the endpoints in turn, one endpoint at a time.

    A failed connection is dropped and the next endpoint is used; a request fails with
    ``EtcdUnavailable`` only after every endpoint failed it once. Retrying a write whose
    response was lost can apply it twice; ``put_if`` callers read back to be sure (the
    lock does). Writes are never hedged (sent to two members at once); reads are, after
    ``hedge_delay`` (see the module docstring), on short-lived extra connections.
    """

    def __init__(
        self,
        settings: EtcdSettings,
        tls: ssl.SSLContext | None,
        factory: ClientFactory = GatewayClient,
    ) -> None:
        self._settings = settings
        self._pool = EndpointPool(settings, tls, factory)
        self._guard = StallGuard(settings.hedge_delay)
        self._watch_timings = WatchTimings(
            request_timeout=settings.request_timeout,
            idle=settings.keepalive_time,
            probe=settings.keepalive_timeout,
        )

    @property
    def endpoint(self) -> EtcdEndpoint:
        """Return the endpoint in use (or tried next)."""
        return self._pool.endpoint

    def close(self) -> None:
        """Close every connection, at once: nothing is waited for."""
        self._pool.close()

    async def _call(self, what: str, op: Callable[[EndpointClient], Awaitable[_T]]) -> _T:
        return await call_in_turn(self._pool, self._guard, what, op)

    async def _read(self, what: str, op: Callable[[EndpointClient], Awaitable[_T]]) -> _T:
        return await hedged_read(
            self._pool,
            what,
            op,
            hedge_delay=self._settings.hedge_delay,
            request_timeout=self._settings.request_timeout,
        )

    async def get(self, key: bytes) -> KeyValue | None:
        """Return the key, or None when it does not exist.

        Raises:
            EtcdUnavailable: no endpoint answered.
        """
        return await self._read("get", lambda client: kv.get(client, key))

    async def get_prefix(self, prefix: bytes) -> Listing:
        """Return every key under ``prefix`` in key order and the revision read at.

        Raises:
            EtcdUnavailable: no endpoint answered.
        """
        return await self._read("get_prefix", lambda client: kv.get_prefix(client, prefix))

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Write the key; return the revision of the write.

        Raises:
            EtcdLeaseExpired: ``lease`` does not exist.
            EtcdUnavailable: no endpoint answered.
        """
        return await self._call("put", lambda client: kv.put(client, key, value, lease))

    async def put_if(
        self, key: bytes, value: bytes, condition: Condition, *, lease: int = 0
    ) -> bool:
        """Write the key in one transaction only if ``condition`` holds; return whether.

        Raises:
            EtcdLeaseExpired: ``lease`` does not exist.
            EtcdUnavailable: no endpoint answered.
        """
        return await self._call(
            "put_if", lambda client: kv.put_if(client, key, value, condition, lease)
        )

    async def put_all_if(self, guards: Sequence[Guard], writes: Sequence[Write]) -> TxnResult:
        """Apply every write in one etcd transaction only if every guard holds; else none.

        Raises:
            ValueError: a key is written twice.
            EtcdLeaseExpired: a write's lease does not exist (named: the first write
                with a lease; etcd's error does not say which one it was).
            EtcdUnavailable: no endpoint answered.
        """
        txn = kv.Transaction(guards, writes)
        return await self._call("put_all_if", txn.send)

    async def delete(self, key: bytes) -> bool:
        """Delete the key; return whether it existed.

        Raises:
            EtcdUnavailable: no endpoint answered.
        """
        return await self._call("delete", lambda client: kv.delete(client, key))

    async def grant_lease(self, ttl: timedelta) -> Lease:
        """Grant a lease of ``ttl`` (rounded to whole seconds, at least 1).

        Raises:
            EtcdUnavailable: no endpoint answered.
        """
        return await self._call("grant_lease", lambda client: leases.grant(client, ttl))

    async def keepalive_lease(self, lease_id: int) -> timedelta:
        """Refresh the lease once and return its new TTL.

        Raises:
            EtcdLeaseExpired: the lease no longer exists.
            EtcdUnavailable: no endpoint answered.
        """
        # Refreshing a lease twice is harmless: hedged like a read.
        return await self._read(
            "keepalive_lease",
            lambda client: leases.keep_alive_once(client, lease_id),
        )

    async def revoke_lease(self, lease_id: int) -> None:
        """Revoke the lease and delete its keys; a lease already gone is fine.

        Raises:
            EtcdUnavailable: no endpoint answered.
        """
        await self._call("revoke_lease", lambda client: leases.revoke(client, lease_id))

    async def compact(self, revision: int) -> None:
        """Drop history before ``revision``; a revision already compacted is fine.

        Raises:
            EtcdUnavailable: no endpoint answered.
        """
        await self._call("compact", lambda client: kv.compact(client, revision))

    @asynccontextmanager
    async def open_watch(
        self, key: bytes, *, prefix: bool, start_revision: int
    ) -> AsyncIterator[WatchStream]:
        """Open one watch stream; enter returns once etcd confirmed it.

        Raises:
            EtcdCompacted: ``start_revision`` is older than the compacted history.
            EtcdUnavailable: the stream could not be opened on any endpoint.

        Cancellation:
            Leaving closes the watch's connection.
        """
        async with open_watch_stream(
            self._pool,
            self._guard,
            key,
            prefix=prefix,
            start_revision=start_revision,
            timings=self._watch_timings,
        ) as watch:
            yield watch


@asynccontextmanager
async def open_etcd(settings: EtcdSettings) -> AsyncIterator[GatewayStore]:
    """Connect to etcd and yield the store; close the connection on exit.

    The first endpoint that answers is used; connecting is lazy, so etcd being down at
    startup surfaces as ``EtcdUnavailable`` on the first request, not here.

    Raises:
        EtcdError: the TLS files cannot be read, or the gRPC transport is selected and
            its packages (pgcm-common's ``grpc`` extra) are not installed.

    Cancellation:
        Closing on exit is immediate.
    """
    if settings.password is not None and not settings.use_tls:
        log.warning(
            "etcd.auth.plaintext",
            endpoints=settings.endpoints,
            msg="the etcd password is sent without TLS: anyone on the network path can "
            "read it; set ca_file or use https:// endpoints",
        )
    # Reading the certificate, CA and key files (and importing grpclib) blocks: off the loop.
    tls, factory = await anyio.to_thread.run_sync(_transport, settings)
    store = GatewayStore(settings, tls, factory)
    try:
        yield store
    finally:
        store.close()


def _transport(settings: EtcdSettings) -> tuple[ssl.SSLContext | None, ClientFactory]:
    """Return the TLS context and the client class of the transport ``settings`` select.

    Reads files and may import modules: call it off the loop.

    Raises:
        EtcdError: a TLS file cannot be read, or gRPC is chosen but grpclib or
            betterproto2 is not installed.
    """
    transport = choose_transport(settings)
    return client_context(settings, transport), _factory(transport)


def _factory(transport: TransportName) -> ClientFactory:
    if transport == "gateway":
        return GatewayClient
    try:
        # grpclib, h2 and betterproto2 cost memory: loaded only for this transport.
        from pgcm_common._etcd.grpc_client import GrpcClient  # noqa: PLC0415
    except ImportError as exc:
        raise EtcdError(
            f"etcd transport grpc needs pgcm-common's grpc extra (grpclib, betterproto2): {exc}"
        ) from exc
    log.info("etcd.transport", transport=transport)
    return GrpcClient
