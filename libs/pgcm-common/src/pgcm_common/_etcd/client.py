"""The real etcd store: aetcd's stubs over a channel we build (TLS, keepalive, failover).

aetcd 1.0 opens ``grpc.aio.insecure_channel`` in ``Client.connect`` and nowhere else, so
``_ChannelClient`` overrides ``connect`` to open a secure channel when TLS is configured,
pass our keepalive options and wait (bounded) for the connection before the first
request. Everything else (request building, auth token metadata, stubs) stays aetcd's.
Watches and lease keepalives use aetcd's generated stubs directly: aetcd's own watcher
runs unowned asyncio tasks, which pgcm forbids (every task needs an owner that outlives
it). See docs/adr/0001-etcd-client.md.

A frozen member (SIGSTOP, a stuck VM) is the hard case: the kernel still accepts its
TCP connections and buffers our requests, but nothing ever answers, so only timeouts
tell. Waiting for ``request_timeout`` on it made every caller with a shorter deadline
(supervise's health check) fail. So a request that stays unanswered for ``hedge_delay``
is handled by kind:

* reads (``get``, ``get_prefix``, ``keepalive_lease``) are *hedged*: the same request
  also goes to the next endpoint, on a connection of its own, and the first answer
  wins; when that was another endpoint, the store adopts its connection and drops the
  slow one, so later calls (and watches) go to the member that answered;
* writes and watch set-ups are never sent twice at once (a write may apply twice):
  the member must answer a cheap local read (serializable, no Raft round) within
  ``hedge_delay``; if it does not, the write is abandoned on it and tried on the next
  endpoint, exactly as after ``request_timeout`` before. A member that is alive but slow
  (an election, a slow disk) answers that probe, so its write is awaited as usual.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from typing import Generic, NoReturn, Protocol, TypeVar, final

import aetcd
import aetcd.exceptions
import aetcd.rpc
import aetcd.transactions
import aetcd.utils
import anyio
import grpc
import grpc.aio
import structlog

from pgcm_common._etcd.model import (
    Absent,
    Condition,
    Deleted,
    EtcdCompacted,
    EtcdLeaseExpired,
    Guard,
    KeyValue,
    Lease,
    Listing,
    ModRevisionIs,
    TxnResult,
    ValueIs,
    WatchBatch,
    WatchEvent,
    Write,
    check_writes,
    lease_seconds,
)
from pgcm_common._etcd.settings import EtcdEndpoint, EtcdSettings
from pgcm_common.errors import EtcdError, EtcdUnavailable

__all__ = ["AetcdStore", "open_etcd"]

log = structlog.get_logger()

_T = TypeVar("_T")

# Failures after which another endpoint (or a fresh connection) may succeed. CANCELLED
# shows up on calls whose channel we closed after another call failed on it;
# UNAUTHENTICATED when the auth token expired (a new connection authenticates again).
_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)
# Statuses that mean the member did not answer a probe (anything else is an answer).
_NO_ANSWER = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)
_CLOSE_GRACE_S = 1.0
_EVENT_DELETE = 1  # mvccpb.Event.EventType.DELETE
# Any key does for a liveness probe: a count-only serializable read of it is answered
# from the member's own store, without a Raft round, so even a member that lost its
# leader answers at once; permission errors (RBAC) are answers too.
_PROBE_KEY = b"\x00pgcm-liveness-probe"


class ConnectionClosedUnderCall(EtcdUnavailable):
    """grpc.aio cancelled a call because its channel was closed by another task."""


@final
class MemberUnresponsive(Exception):
    """A request stalled and the member did not answer a liveness probe either."""

    def __init__(self, endpoint: EtcdEndpoint, waited_s: float) -> None:
        self.endpoint = endpoint
        self.waited_s = waited_s
        super().__init__(f"{endpoint} did not answer a liveness probe within {waited_s:g}s")


@contextmanager
def _foreign_cancellation_as_unavailable(what: str, endpoint: object) -> Iterator[None]:
    """Turn grpc.aio's own cancellation of a call into EtcdUnavailable.

    grpc.aio cancels every call in flight on a channel when the channel is closed, and
    the awaiting coroutine then sees ``asyncio.CancelledError`` although nobody
    cancelled its task. That happens when another task drops a failed connection
    (endpoint failover). Left alone, that stray cancellation would silently end
    whichever loop was waiting (anyio counts it as a cancelled task), so it is reported
    as the connection failure it is. A real cancellation of the task (anyio's cancel
    scopes call ``Task.cancel()``, so ``cancelling()`` is non-zero) propagates as is.
    """
    try:
        yield
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        raise ConnectionClosedUnderCall(
            f"etcd {what}: call cancelled by its closed connection to {endpoint}"
        ) from exc


def _status(exc: BaseException) -> grpc.StatusCode | None:
    """Return the gRPC status behind ``exc`` (aetcd wraps AioRpcError as ``__cause__``)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, grpc.aio.AioRpcError):
            code: grpc.StatusCode = seen.code()
            return code
        seen = seen.__cause__
    return None


def _details(exc: BaseException) -> str:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, grpc.aio.AioRpcError):
            return str(seen.details() or "")
        seen = seen.__cause__
    return str(exc)


def _retryable(exc: BaseException) -> bool:
    if isinstance(
        exc,
        TimeoutError
        # grpc.aio refuses calls on a channel another task just closed after a failure.
        | grpc.aio.UsageError
        | aetcd.exceptions.ConnectionFailedError
        | aetcd.exceptions.ConnectionTimeoutError
        | aetcd.exceptions.UnauthenticatedError
        | MemberUnresponsive,
    ):
        return True
    return _status(exc) in _RETRYABLE


@final
class _ChannelClient(aetcd.Client):  # type: ignore[misc]  # aetcd ships no type hints
    """aetcd's client for one endpoint, with our channel: TLS, keepalive, bounded dial."""

    def __init__(
        self,
        endpoint: EtcdEndpoint,
        settings: EtcdSettings,
        credentials: grpc.ChannelCredentials | None,
        *,
        index: int,
    ) -> None:
        password = settings.password.get_secret_value() if settings.password else None
        super().__init__(
            host=endpoint.host,
            port=endpoint.port,
            username=settings.username,
            password=password,
            timeout=settings.request_timeout.total_seconds(),
            options=dict(settings.grpc_options()),
        )
        self.endpoint = endpoint
        self.index = index  # position in EtcdSettings.endpoints
        self._credentials = credentials
        self._dial_timeout_s = settings.dial_timeout.total_seconds()

    async def connect(self) -> None:
        """Open the channel, wait until it is connected, and authenticate if configured.

        Raises:
            TimeoutError: the endpoint did not accept a connection within dial_timeout.
            grpc.aio.AioRpcError: authentication failed.
        """
        if self._connected.is_set():
            return
        options = list(self._options.items())
        target = self.endpoint.target
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(target, options=options)
        else:
            channel = grpc.aio.secure_channel(target, self._credentials, options=options)
        try:
            with anyio.fail_after(self._dial_timeout_s):
                await channel.channel_ready()
            metadata = None
            if self._username is not None and self._password is not None:
                response = await aetcd.rpc.AuthStub(channel).Authenticate(
                    aetcd.rpc.AuthenticateRequest(name=self._username, password=self._password),
                    timeout=self._timeout,
                )
                metadata = (("token", response.token),)
        except BaseException:
            with anyio.move_on_after(_CLOSE_GRACE_S, shield=True):
                await channel.close()
            raise
        self.channel = channel
        self.metadata = metadata
        self.kvstub = aetcd.rpc.KVStub(channel)
        self.clusterstub = aetcd.rpc.ClusterStub(channel)
        self.leasestub = aetcd.rpc.LeaseStub(channel)
        self.maintenancestub = aetcd.rpc.MaintenanceStub(channel)
        self.watchstub = aetcd.rpc.WatchStub(channel)
        # aetcd's watcher (unowned asyncio tasks) is never started: close() skips it.
        self._watcher = None
        self._connected.set()


async def _read_credentials(settings: EtcdSettings) -> grpc.ChannelCredentials | None:
    if not settings.use_tls:
        return None

    async def read(path: object) -> bytes | None:
        return None if path is None else await anyio.Path(str(path)).read_bytes()

    try:
        root = await read(settings.ca_file)
        key = await read(settings.key_file)
        chain = await read(settings.cert_file)
    except OSError as exc:
        raise EtcdError(f"cannot read etcd TLS files: {exc}") from exc
    creds: grpc.ChannelCredentials = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=chain
    )
    return creds


@final
class AetcdStore:
    """The real :class:`EtcdStore`: tries the endpoints in turn, one connection at a time.

    A failed connection is dropped and the next endpoint is used; a request fails with
    ``EtcdUnavailable`` only after every endpoint failed it once. Retrying a write whose
    response was lost can apply it twice; ``put_if`` callers read back to be sure (the
    lock does). Writes are never hedged (sent to two members at once); reads are, after
    ``hedge_delay`` (see the module docstring), on short-lived extra connections.
    """

    def __init__(self, settings: EtcdSettings, credentials: grpc.ChannelCredentials | None) -> None:
        self._settings = settings
        self._credentials = credentials
        self._endpoints = settings.parsed_endpoints
        self._index = 0
        self._client: _ChannelClient | None = None
        self._connecting = anyio.Lock()
        self._hedge_delay_s = settings.hedge_delay.total_seconds()

    @property
    def endpoint(self) -> EtcdEndpoint:
        """Return the endpoint in use (or tried next)."""
        return self._endpoints[self._index]

    async def aclose(self) -> None:
        """Close the connection.

        Cancellation:
            Closing is shielded and bounded by a short grace.
        """
        client, self._client = self._client, None
        if client is not None:
            with anyio.move_on_after(_CLOSE_GRACE_S, shield=True):
                await client.close()

    async def _connected(self) -> _ChannelClient:
        async with self._connecting:
            if self._client is None:
                client = await self._dial(self._index)
                adopted = self._in_use()
                if adopted is not None:
                    # A hedged read adopted another connection while we dialled.
                    await _close(client)
                    return adopted
                self._client = client
            return self._client

    def _in_use(self) -> _ChannelClient | None:
        # A method, not the attribute: mypy would keep the narrowing across an await.
        return self._client

    async def _dial(self, index: int) -> _ChannelClient:
        """Open a connection to the endpoint at ``index``; on failure move past it.

        Raises:
            TimeoutError: no connection within dial_timeout (see ``_ChannelClient``).
        """
        client = _ChannelClient(
            self._endpoints[index], self._settings, self._credentials, index=index
        )
        try:
            await client.connect()
        except Exception:
            if self._index == index and self._client is None:
                self._index = (index + 1) % len(self._endpoints)
            raise
        return client

    async def _drop(self, client: _ChannelClient, exc: BaseException) -> None:
        """Forget a failing connection and move on to the next endpoint."""
        if self._client is client:
            self._client = None
            self._index = (self._index + 1) % len(self._endpoints)
            log.warning(
                "etcd.endpoint.failover",
                endpoint=str(client.endpoint),
                next_endpoint=str(self.endpoint),
                error=_details(exc),
            )
        await _close(client)

    async def _adopt(self, client: _ChannelClient, replaced: _ChannelClient | None) -> bool:
        """Make ``client`` (a hedge that answered first) the connection in use.

        Only when the connection in use is still ``replaced`` (or none): if another call
        moved on meanwhile, its choice stands. The replaced connection is closed, which
        also ends the calls and watch streams still waiting on it (they retry here).

        Returns:
            Whether ``client`` was adopted (if not, the caller still owns it).
        """
        if self._client is not replaced and self._client is not None:
            return False
        old, self._client = self._client, client
        previous = self._endpoints[self._index] if old is None else old.endpoint
        self._index = client.index
        log.warning(
            "etcd.endpoint.failover",
            endpoint=str(previous),
            next_endpoint=str(client.endpoint),
            error=f"no answer within hedge_delay ({self._hedge_delay_s:g}s)",
            msg="the next endpoint answered a hedged read first; using it from now on",
        )
        if old is not None:
            await _close(old)
        return True

    async def _answers(self, client: _ChannelClient) -> bool:
        """Return whether the member answers a local read within ``hedge_delay``.

        Bounded by gRPC's own deadline, not a cancel scope: grpc.aio replaces the
        cancellation of a call by one anyio does not recognise as its own.
        """
        request = aetcd.rpc.RangeRequest(key=_PROBE_KEY, serializable=True, count_only=True)
        try:
            with _foreign_cancellation_as_unavailable("probe", client.endpoint):
                await client.kvstub.Range(
                    request, timeout=self._hedge_delay_s, metadata=client.metadata
                )
        except grpc.aio.AioRpcError as exc:
            return exc.code() not in _NO_ANSWER
        except (grpc.aio.UsageError, EtcdUnavailable):
            return False  # the connection was closed meanwhile
        return True

    async def _guarded(self, client: _ChannelClient, work: Callable[[], Awaitable[_T]]) -> _T:
        """Await ``work`` on ``client``; abandon it if it stalls on an unresponsive member.

        After ``hedge_delay`` without an answer the member is probed (:meth:`_answers`)
        on the same connection; ``work`` is cancelled only when the probe is not
        answered either, so a slow but live member is still waited for. Work and probe
        run in child tasks: a gRPC call cancelled under a cancel scope ends with a
        cancellation anyio does not recognise, which a child task absorbs.

        Raises:
            MemberUnresponsive: the member answered neither ``work`` nor the probe.
            ConnectionClosedUnderCall: another task closed the connection under us.
        """
        results: list[_T] = []
        errors: list[Exception] = []
        stalled: list[bool] = []

        async def run(race: anyio.CancelScope) -> None:
            try:
                with _foreign_cancellation_as_unavailable("request", client.endpoint):
                    results.append(await work())
            except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group
                errors.append(exc)
            race.cancel()

        async def watchdog(race: anyio.CancelScope) -> None:
            await anyio.sleep(self._hedge_delay_s)
            if not await self._answers(client):
                stalled.append(True)
                race.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, tg.cancel_scope)
            tg.start_soon(watchdog, tg.cancel_scope)
        if results:
            return results[0]
        if errors:
            raise errors[0]
        if stalled:
            raise MemberUnresponsive(client.endpoint, 2 * self._hedge_delay_s)
        # Both children ended cancelled without our scope or an outer one asking:
        # grpc.aio cancelled the call (its channel was closed by another task).
        raise ConnectionClosedUnderCall(f"etcd request to {client.endpoint}: call cancelled")

    async def _call(self, what: str, op: Callable[[_ChannelClient], Awaitable[_T]]) -> _T:
        last: Exception | None = None
        for _ in range(len(self._endpoints)):
            try:
                client = await self._connected()
            except Exception as exc:
                if not _retryable(exc):
                    raise EtcdError(f"etcd {what} failed: {_details(exc)}") from exc
                last = exc
                continue
            try:
                return await self._guarded(client, functools.partial(op, client))
            except ConnectionClosedUnderCall as exc:
                last = exc  # whoever closed it already dropped it: the next try reconnects
                continue
            except EtcdError:
                raise
            except Exception as exc:
                if not _retryable(exc):
                    raise EtcdError(f"etcd {what} failed: {_details(exc)}") from exc
                last = exc
                await self._drop(client, exc)
        endpoints = ", ".join(map(str, self._endpoints))
        raise EtcdUnavailable(f"etcd {what}: no endpoint answered ({endpoints})") from last

    async def _read(self, what: str, op: Callable[[_ChannelClient], Awaitable[_T]]) -> _T:
        """Run an idempotent request, hedged: the first endpoint to answer wins.

        The request goes to the connection in use. Whenever no answer came within
        ``hedge_delay`` (or an attempt failed), the same request is also sent to the
        next endpoint on a connection of its own, until every endpoint was asked once.
        The first answer cancels the others; if it came from a hedge connection, the
        store adopts that connection (:meth:`_adopt`); other hedges are closed.

        Raises:
            EtcdError: an endpoint gave a definite, non-retryable answer (an error).
            EtcdUnavailable: no endpoint answered.
        """
        return await _HedgedRead(self, what, op).run()

    async def get(self, key: bytes) -> KeyValue | None:
        """Return the key, or None when it does not exist.

        Raises:
            EtcdUnavailable: no endpoint answered.
        """

        async def op(client: _ChannelClient) -> KeyValue | None:
            found = await client.get(key)
            return None if found is None else KeyValue.from_etcd(found)

        return await self._read("get", op)

    async def get_prefix(self, prefix: bytes) -> Listing:
        """Return every key under ``prefix`` in key order and the revision read at.

        Raises:
            EtcdUnavailable: no endpoint answered.
        """

        async def op(client: _ChannelClient) -> Listing:
            result = await client.get_prefix(prefix, sort_order="ascend", sort_target="key")
            items = tuple(KeyValue.from_etcd(kv) for kv in result.kvs)
            return Listing(revision=int(result.header.revision), items=items)

        return await self._read("get_prefix", op)

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Write the key; return the revision of the write.

        Raises:
            EtcdLeaseExpired: ``lease`` does not exist.
            EtcdUnavailable: no endpoint answered.
        """

        async def op(client: _ChannelClient) -> int:
            try:
                result = await client.put(key, value, lease=lease or None)
            except aetcd.exceptions.ClientError as exc:
                _raise_lease_error(exc, lease)
                raise
            return int(result.header.revision)

        return await self._call("put", op)

    async def put_if(
        self, key: bytes, value: bytes, condition: Condition, *, lease: int = 0
    ) -> bool:
        """Write the key in one transaction only if ``condition`` holds; return whether.

        Raises:
            EtcdLeaseExpired: ``lease`` does not exist.
            EtcdUnavailable: no endpoint answered.
        """
        compare = _compare(key, condition)

        async def op(client: _ChannelClient) -> bool:
            try:
                succeeded, _ = await client.transaction(
                    compare=[compare],
                    success=[aetcd.transactions.Put(key, value, lease=lease or None)],
                    failure=[],
                )
            except aetcd.exceptions.ClientError as exc:
                _raise_lease_error(exc, lease)
                raise
            return bool(succeeded)

        return await self._call("put_if", op)

    async def put_all_if(self, guards: Sequence[Guard], writes: Sequence[Write]) -> TxnResult:
        """Apply every write in one etcd transaction only if every guard holds; else none.

        The request goes to the KV stub directly (aetcd's compare builders, our own
        request) because ``aetcd.Client.transaction`` drops the response header, and
        with it the revision of the writes.

        Raises:
            ValueError: a key is written twice.
            EtcdLeaseExpired: a write's lease does not exist (named: the first write
                with a lease; etcd's error does not say which one it was).
            EtcdUnavailable: no endpoint answered.
        """
        check_writes(writes)
        compares = [_compare(guard.key, guard.condition).build_message() for guard in guards]
        puts = [
            aetcd.rpc.RequestOp(
                request_put=aetcd.rpc.PutRequest(key=w.key, value=w.value, lease=w.lease)
            )
            for w in writes
        ]
        request = aetcd.rpc.TxnRequest(compare=compares, success=puts, failure=[])
        first_lease = next((w.lease for w in writes if w.lease), 0)

        async def op(client: _ChannelClient) -> TxnResult:
            try:
                response = await client.kvstub.Txn(
                    request,
                    timeout=self._settings.request_timeout.total_seconds(),
                    metadata=client.metadata,
                )
            except grpc.aio.AioRpcError as exc:
                _raise_lease_error(exc, first_lease)
                raise
            return TxnResult(
                succeeded=bool(response.succeeded), revision=int(response.header.revision)
            )

        return await self._call("put_all_if", op)

    async def delete(self, key: bytes) -> bool:
        """Delete the key; return whether it existed.

        Raises:
            EtcdUnavailable: no endpoint answered.
        """

        async def op(client: _ChannelClient) -> bool:
            return await client.delete(key) is not None

        return await self._call("delete", op)

    async def grant_lease(self, ttl: timedelta) -> Lease:
        """Grant a lease of ``ttl`` (rounded to whole seconds, at least 1).

        Raises:
            EtcdUnavailable: no endpoint answered.
        """

        async def op(client: _ChannelClient) -> Lease:
            granted = await client.lease(lease_seconds(ttl))
            return Lease(id=int(granted.id), ttl=timedelta(seconds=int(granted.ttl)))

        return await self._call("grant_lease", op)

    async def keepalive_lease(self, lease_id: int) -> timedelta:
        """Refresh the lease once and return its new TTL.

        Raises:
            EtcdLeaseExpired: the lease no longer exists.
            EtcdUnavailable: no endpoint answered.
        """

        async def op(client: _ChannelClient) -> timedelta:
            call = client.leasestub.LeaseKeepAlive(
                timeout=self._settings.request_timeout.total_seconds(),
                metadata=client.metadata,
            )
            try:
                await call.write(aetcd.rpc.LeaseKeepAliveRequest(ID=lease_id))
                await call.done_writing()
                reply = await call.read()
            finally:
                call.cancel()
            if reply is grpc.aio.EOF or int(reply.TTL) <= 0:
                raise EtcdLeaseExpired(lease_id)
            return timedelta(seconds=int(reply.TTL))

        # Refreshing a lease twice is harmless: hedged like a read.
        return await self._read("keepalive_lease", op)

    async def revoke_lease(self, lease_id: int) -> None:
        """Revoke the lease and delete its keys; a lease already gone is fine.

        Raises:
            EtcdUnavailable: no endpoint answered.
        """

        async def op(client: _ChannelClient) -> None:
            try:
                await client.revoke_lease(lease_id)
            except aetcd.exceptions.ClientError as exc:
                if _status(exc) != grpc.StatusCode.NOT_FOUND:
                    raise

        await self._call("revoke_lease", op)

    async def compact(self, revision: int) -> None:
        """Drop history before ``revision``; a revision already compacted is fine.

        Raises:
            EtcdUnavailable: no endpoint answered.
        """

        async def op(client: _ChannelClient) -> None:
            try:
                await client.compact(revision, physical=True)
            except aetcd.exceptions.ClientError as exc:
                if "compacted" not in _details(exc):
                    raise

        await self._call("compact", op)

    @asynccontextmanager
    async def open_watch(
        self, key: bytes, *, prefix: bool, start_revision: int
    ) -> AsyncIterator[_Watch]:
        """Open one watch stream; enter returns once etcd confirmed it.

        Raises:
            EtcdCompacted: ``start_revision`` is older than the compacted history.
            EtcdUnavailable: the stream could not be opened on any endpoint.

        Cancellation:
            Leaving cancels the gRPC stream.
        """
        client = await self._call("watch", _connected_client)
        try:
            call = client.watchstub.Watch(metadata=client.metadata)
        except grpc.aio.UsageError as exc:  # closed meanwhile by another task's failure
            raise EtcdUnavailable(f"etcd watch: connection to {client.endpoint} closed") from exc
        watch = _Watch(self, client, call)
        try:
            create = aetcd.rpc.WatchCreateRequest(
                key=key,
                range_end=aetcd.utils.prefix_range_end(key) if prefix else b"",
                start_revision=start_revision,
                progress_notify=True,
            )
            try:
                await self._guarded(
                    client,
                    lambda: watch.establish(
                        aetcd.rpc.WatchRequest(create_request=create),
                        self._settings.request_timeout.total_seconds(),
                    ),
                )
            except MemberUnresponsive as exc:
                await self._drop(client, exc)
                raise EtcdUnavailable(f"etcd watch: {exc}") from exc
            yield watch
        finally:
            call.cancel()


@final
class _HedgedRead(Generic[_T]):
    """One hedged read (see :meth:`AetcdStore._read`): attempts race, first answer wins.

    Attempt 0 uses the store's connection; attempt ``k`` a connection of its own to the
    ``k``-th endpoint after it. While some attempt is still waiting (a frozen member
    holds it), hedges that failed transiently are asked again every ``hedge_delay``
    until ``request_timeout`` after the start: freezing the Raft leader makes the other
    members answer "leader changed" until they elected a new one, about a second.
    """

    def __init__(
        self, store: AetcdStore, what: str, op: Callable[[_ChannelClient], Awaitable[_T]]
    ) -> None:
        self._store = store
        self._what = what
        self._op = op
        self._count = len(store._endpoints)  # noqa: SLF001 - same module, our store
        self._start = store._index  # noqa: SLF001
        self._won: list[tuple[_ChannelClient, _T]] = []
        self._failures: list[Exception] = []
        self._fatal: list[Exception] = []
        self._hedges: dict[int, _ChannelClient] = {}
        self._shared: list[_ChannelClient] = []
        self._retry: list[int] = []
        self._in_flight = 0
        self._failed = anyio.Event()

    async def run(self) -> _T:
        store = self._store
        delay = store._hedge_delay_s  # noqa: SLF001
        give_up_at = anyio.current_time() + store._settings.request_timeout.total_seconds()  # noqa: SLF001
        try:
            async with anyio.create_task_group() as tg:
                pending = list(range(self._count))
                while pending or (self._in_flight and anyio.current_time() < give_up_at):
                    if self._in_flight:
                        with anyio.move_on_after(delay):
                            await self._failed.wait()
                    self._failed = anyio.Event()
                    if pending:
                        self._launch(tg, pending.pop(0))
                    elif self._retry and self._in_flight:
                        self._launch(tg, self._retry.pop(0))
            if self._won:
                return await self._settle(*self._won[0])
        finally:
            with anyio.move_on_after(_CLOSE_GRACE_S, shield=True):
                for hedge in self._hedges.values():
                    await _close(hedge)
        if self._fatal:
            raise self._fatal[0]
        endpoints = ", ".join(map(str, store._endpoints))  # noqa: SLF001
        last = self._failures[-1] if self._failures else None
        raise EtcdUnavailable(f"etcd {self._what}: no endpoint answered ({endpoints})") from last

    async def _settle(self, client: _ChannelClient, result: _T) -> _T:
        """Adopt the winning hedge connection (if it is one) and return its answer."""
        replaced = self._shared[0] if self._shared else None
        for offset, hedge in list(self._hedges.items()):
            if hedge is client and await self._store._adopt(client, replaced):  # noqa: SLF001
                del self._hedges[offset]
        return result

    def _launch(self, tg: anyio.abc.TaskGroup, offset: int) -> None:
        self._in_flight += 1
        tg.start_soon(self._attempt, offset, tg.cancel_scope)

    async def _attempt(self, offset: int, race: anyio.CancelScope) -> None:
        try:
            await self._ask(offset, race)
        finally:
            self._in_flight -= 1
            self._failed.set()  # do not wait out hedge_delay: ask the next endpoint now

    async def _ask(self, offset: int, race: anyio.CancelScope) -> None:
        client: _ChannelClient | None = None
        try:
            client = await self._connection(offset)
            with _foreign_cancellation_as_unavailable(self._what, client.endpoint):
                result = await self._op(client)
        except ConnectionClosedUnderCall as exc:
            self._failures.append(exc)  # whoever closed it dropped it: the others go on
        except EtcdError as exc:
            self._fatal.append(exc)  # etcd's own answer, such as an expired lease
            race.cancel()
        except Exception as exc:  # noqa: BLE001 - classified and kept for the caller
            if not _retryable(exc):
                error = EtcdError(f"etcd {self._what} failed: {_details(exc)}")
                error.__cause__ = exc
                self._fatal.append(error)
                race.cancel()
                return
            self._failures.append(exc)
            if offset == 0:
                if client is not None:
                    await self._store._drop(client, exc)  # noqa: SLF001
            else:
                self._retry.append(offset)
        else:
            self._won.append((client, result))
            race.cancel()

    async def _connection(self, offset: int) -> _ChannelClient:
        if offset == 0:
            client = await self._store._connected()  # noqa: SLF001
            self._shared.append(client)
            return client
        hedge = self._hedges.get(offset)
        if hedge is None:
            index = (self._start + offset) % self._count
            hedge = self._hedges[offset] = await self._store._dial(index)  # noqa: SLF001
        return hedge


async def _connected_client(client: _ChannelClient) -> _ChannelClient:
    return client


async def _close(client: _ChannelClient) -> None:
    """Close a connection, shielded and bounded (calls still on it end as cancelled)."""
    with anyio.move_on_after(_CLOSE_GRACE_S, shield=True):
        await client.close()


def _raise_lease_error(exc: Exception, lease: int) -> None:
    if lease and _status(exc) == grpc.StatusCode.NOT_FOUND:
        raise EtcdLeaseExpired(lease) from exc


def _compare(key: bytes, condition: Condition) -> aetcd.transactions.BaseCompare:
    compare: aetcd.transactions.BaseCompare
    match condition:
        case Absent():
            compare = aetcd.transactions.Create(key) == 0
        case ModRevisionIs(revision):
            compare = aetcd.transactions.Mod(key) == revision
        case ValueIs(value):
            compare = aetcd.transactions.Value(key) == value
    return compare


class _StreamCall(Protocol):
    async def write(self, request: object) -> None: ...
    async def read(self) -> object: ...
    def cancel(self) -> bool: ...


@final
class _Watch:
    """One established watch stream on one connection."""

    def __init__(self, store: AetcdStore, client: _ChannelClient, call: _StreamCall) -> None:
        self._store = store
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
            await self._store._drop(self._client, exc)  # noqa: SLF001 - same module, our store
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
            with _foreign_cancellation_as_unavailable("watch", self._client.endpoint):
                response = await self._call.read()
        except (grpc.aio.AioRpcError, grpc.aio.BaseError) as exc:
            await self._broken(exc)
        if response is grpc.aio.EOF:
            raise EtcdUnavailable(f"etcd watch on {self._client.endpoint} ended")
        watch_response: _WatchResponse = response  # type: ignore[assignment]  # aetcd's protobuf is untyped
        return watch_response

    async def _broken(self, exc: Exception) -> NoReturn:
        await self._store._drop(self._client, exc)  # noqa: SLF001 - same module, our store
        raise EtcdUnavailable(
            f"etcd watch on {self._client.endpoint} broke: {_details(exc)}"
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


@asynccontextmanager
async def open_etcd(settings: EtcdSettings) -> AsyncIterator[AetcdStore]:
    """Connect to etcd and yield the store; close the connection on exit.

    The first endpoint that answers is used; connecting is lazy, so etcd being down at
    startup surfaces as ``EtcdUnavailable`` on the first request, not here.

    Raises:
        EtcdError: the TLS files cannot be read.

    Cancellation:
        Closing on exit is shielded and bounded.
    """
    if settings.password is not None and not settings.use_tls:
        log.warning(
            "etcd.auth.plaintext",
            endpoints=settings.endpoints,
            msg="the etcd password is sent without TLS: anyone on the network path can "
            "read it; set ca_file or use https:// endpoints",
        )
    store = AetcdStore(settings, await _read_credentials(settings))
    try:
        yield store
    finally:
        await store.aclose()
