"""This node's :class:`~pgcm_common.records.NodeStatus` at ``<ns>/supervise/<node>``, on a lease.

pgcm-failover reads these records for its pre-flight (is the target caught up? is a
transaction older than the pause timeout open?) and to wait until Pacemaker settles
(promotion scores, bans). The record is attached to a lease kept alive by this process,
so it vanishes ``status_lease_ttl`` after supervise dies; a lost lease is re-granted.

It is rewritten at once when the Pacemaker part of the view changes and otherwise every
``status_interval`` (with fresh PostgreSQL facts).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Protocol, TypeVar, final

import anyio
import structlog
from anyio.abc import TaskStatus
from pydantic import SecretStr

from pgcm_common.errors import EtcdError, PgBouncerError
from pgcm_common.etcd import EtcdLeaseExpired, EtcdStore
from pgcm_common.pacemaker import (
    ClusterState,
    FenceAction,
    FenceStatus,
    NodeAddressResolver,
    NodeAddressUnknown,
    ResourceInstance,
    Role,
)
from pgcm_common.pgbouncer import PgBouncerAdminProtocol
from pgcm_common.postgres import (
    INSUFFICIENT_PRIVILEGE,
    PostgresConnector,
    PostgresProtocolError,
    PostgresQueryError,
    SimpleQueryConnection,
    close_quietly,
    parse_dsn,
)
from pgcm_common.records import (
    FencingRecord,
    InstanceTrouble,
    KeyLayout,
    NodeRole,
    NodeStatus,
    PostgresStatus,
    ReplicationPeer,
)
from pgcm_supervise.constraints import ConstraintsUnreadable, MoveConstraintSource
from pgcm_supervise.metrics import SuperviseMetrics
from pgcm_supervise.publisher import Observation

__all__ = [
    "LocalPostgresProbe",
    "NodeStatusPublisher",
    "PausedStateSource",
    "PgBouncerPausedState",
    "PostgresProbe",
    "build_node_status",
]

log = structlog.get_logger("pgcm.supervise.status")

_CLEANUP_S = 5.0

_REPLICATION_SQL = """
SELECT application_name, state, sync_state,
       (pg_current_wal_lsn() - replay_lsn)::bigint AS lag_bytes,
       extract(epoch FROM replay_lag)::float8 AS lag_s
FROM pg_stat_replication
ORDER BY application_name
"""
# A primary's timeline is the first 8 hex digits of its current WAL file's name (exact
# at once after a promotion, unlike pg_control_checkpoint(), which waits for the next
# checkpoint). A standby reports the timeline its walreceiver streams; NULL when it is
# not streaming or the role may not read pg_stat_wal_receiver.
_PRIMARY_TIMELINE_SQL = """
SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
"""
_STANDBY_TIMELINE_SQL = "SELECT received_tli FROM pg_stat_wal_receiver"
_OLDEST_XACT_SQL = """
SELECT extract(epoch FROM max(clock_timestamp() - xact_start))::float8
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND xact_start IS NOT NULL AND pid <> pg_backend_pid()
"""


class PostgresProbe(Protocol):
    """Reads facts about the local PostgreSQL."""

    async def probe(self) -> PostgresStatus:
        """Return the local PostgreSQL's recovery state, replication and oldest transaction.

        Raises:
            PostgresError: PostgreSQL cannot be reached, refused the login or a query.
            TimeoutError: the queries took longer than the probe's bound.
        """
        ...


class PausedStateSource(Protocol):
    """Tells whether this node's PgBouncer is paused (None: unknown)."""

    async def paused(self) -> bool | None:
        """Return True/False when known, None otherwise; never raise for PgBouncer trouble."""
        ...


@final
class LocalPostgresProbe:
    """The real :class:`PostgresProbe`: one short connection per probe.

    It speaks pgcm's own simple-query client (:mod:`pgcm_common.postgres`), so
    pgcm-supervise loads no PostgreSQL driver.
    """

    def __init__(self, dsn: SecretStr, *, timeout: timedelta) -> None:
        # The settings checked the string at load; a failure here would be a bug.
        self._connector = PostgresConnector(
            parse_dsn(dsn.get_secret_value()), connect_timeout=timeout
        )
        self._timeout = timeout

    async def probe(self) -> PostgresStatus:
        """Connect, read ``pg_is_in_recovery()``, replication rows and the oldest transaction.

        Raises:
            PostgresError: PostgreSQL cannot be reached, refused the login or a query,
                or answered with something that is not the expected value.
            TimeoutError: the queries took longer than the timeout.
        """
        connection = await self._connector.connect()
        try:
            with anyio.fail_after(self._timeout.total_seconds()):
                status = await _read_status(connection)
        except BaseException:
            # A query cut short leaves the conversation mid-answer: drop the socket.
            await connection.abort()
            raise
        await close_quietly(connection)
        return status


async def _read_status(connection: SimpleQueryConnection) -> PostgresStatus:
    in_recovery = await _value(connection, "SELECT pg_is_in_recovery()") == "t"
    peers: tuple[ReplicationPeer, ...] = ()
    if not in_recovery:
        rows = (await connection.query(_REPLICATION_SQL)).records()
        peers = tuple(
            ReplicationPeer(
                application_name=row["application_name"] or "",
                state=row["state"] or "",
                sync_state=row["sync_state"] or "",
                lag_bytes=_number(row["lag_bytes"], int),
                lag_s=_number(row["lag_s"], float),
            )
            for row in rows
        )
    timeline = await _timeline(connection, in_recovery=in_recovery)
    oldest = _number(await _value(connection, _OLDEST_XACT_SQL), float)
    return PostgresStatus(
        in_recovery=in_recovery,
        replication=peers,
        oldest_transaction_age_s=None if oldest is None or math.isnan(oldest) else oldest,
        timeline=timeline,
    )


async def _value(connection: SimpleQueryConnection, sql: str) -> str | None:
    """Return the first column of the first row (None: SQL NULL or no row)."""
    result = await connection.query(sql)
    return result.rows[0][0] if result.rows and result.rows[0] else None


_Number = TypeVar("_Number", int, float)


def _number(text: str | None, kind: type[_Number]) -> _Number | None:
    """Return the text value as a number (None for NULL); anything else is a protocol error."""
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError as exc:
        raise PostgresProtocolError(f"expected a number, got {text[:40]!r}") from exc


async def _timeline(connection: SimpleQueryConnection, *, in_recovery: bool) -> int | None:
    """Return the server's timeline, or None when this role may not read it."""
    try:
        value = await _value(
            connection, _STANDBY_TIMELINE_SQL if in_recovery else _PRIMARY_TIMELINE_SQL
        )
    except PostgresQueryError as exc:
        if exc.sqlstate != INSUFFICIENT_PRIVILEGE:
            raise
        # A fact for the operator's status view, never a reason to lose the others.
        return None
    return _number(value, int)


@final
class PgBouncerPausedState:
    """A :class:`PausedStateSource` that asks PgBouncer (``SHOW STATE``, 1.21+).

    PgBouncer 1.18 cannot tell: the answer is then None, never a guess.
    """

    def __init__(self, admin: PgBouncerAdminProtocol, *, timeout: timedelta) -> None:
        self._admin = admin
        self._timeout = timeout

    async def paused(self) -> bool | None:
        """Return PgBouncer's paused flag, or None when unknown or unreachable."""
        try:
            with anyio.fail_after(self._timeout.total_seconds()):
                return (await self._admin.show_state()).paused
        except (PgBouncerError, TimeoutError) as exc:
            log.debug("pgbouncer.state.unknown", error=str(exc))
            return None


def build_node_status(
    observation: Observation,
    *,
    node: str,
    address: str | None,
    pgbouncer_paused: bool | None,
    postgres: PostgresStatus | None,
    problems: tuple[str, ...] = (),
    cib_constraints: tuple[str, ...] = (),
) -> NodeStatus:
    """Return the NodeStatus record of one observation (pure).

    ``cib_constraints`` are move constraints read from the CIB: crm_mon's ``<bans>``
    lists only negative ones, never the ``cli-prefer-*`` a ``--move`` leaves.
    """
    state = observation.state
    notes = list(problems)
    if state is None:
        notes.insert(0, f"crm_mon: {observation.error}")
        return NodeStatus(
            node=node,
            address=address,
            observed_at=observation.observed_at,
            with_quorum=False,
            dc=None,
            primary=None,
            pgbouncer_paused=pgbouncer_paused,
            postgres=postgres,
            problem="; ".join(notes),
        )
    return NodeStatus(
        node=node,
        address=address,
        observed_at=observation.observed_at,
        with_quorum=state.with_quorum,
        dc=state.dc,
        primary=state.primary_node,
        nodes=_node_roles(state),
        move_constraints=tuple(sorted({ban.id for ban in state.bans} | set(cib_constraints))),
        pgbouncer_paused=pgbouncer_paused,
        postgres=postgres,
        problem="; ".join(notes) or None,
        resource_agent=state.resource_agent,
        troubled_instances=tuple(_trouble(i) for i in state.troubled_instances),
        fencing=tuple(_fencing(f) for f in state.fencing),
        fencing_unknown=None
        if state.fence_history_error is None
        else f"crm_mon could not read the fencing history (status {state.fence_history_error})",
    )


def _trouble(instance: ResourceInstance) -> InstanceTrouble:
    return InstanceTrouble(
        resource=instance.resource_id,
        node=instance.node,
        role=instance.role.value,
        failed=instance.failed,
        blocked=instance.blocked,
        managed=instance.managed,
    )


def _fencing(action: FenceAction) -> FencingRecord:
    # Pacemaker 2.1 prints extended-status="0" on pending actions: only a failure's
    # words explain anything.
    words = (action.extended_status, action.exit_reason)
    reason = (
        " ".join(w for w in words if w and not w.isdigit()) or None
        if action.status is FenceStatus.FAILED
        else None
    )
    return FencingRecord(
        target=action.target,
        action=action.action,
        state=action.status.value,
        origin=action.origin,
        client=action.client,
        delegate=action.delegate,
        completed=action.completed,
        reason=reason,
    )


def _node_roles(state: ClusterState) -> tuple[NodeRole, ...]:
    roles: list[NodeRole] = []
    for n in state.nodes:
        instance_roles = [i.role for i in state.instances if i.node == n.name]
        role = instance_roles[0] if instance_roles else Role.STOPPED
        roles.append(
            NodeRole(
                name=n.name,
                online=n.online,
                role=role.value,
                promotion_score=state.promotion_score(n.name),
                data_status=_data_status(state, n.name),
            )
        )
    return tuple(roles)


def _data_status(state: ClusterState, node: str) -> str | None:
    legacy = state.legacy_pgsql_of(node)
    return None if legacy is None else legacy.data_status_raw


def _pacemaker_part(status: NodeStatus) -> tuple[object, ...]:
    # What makes a rewrite urgent: everything except the timestamp and the slow facts.
    return (
        status.with_quorum,
        status.dc,
        status.primary,
        status.nodes,
        status.move_constraints,
        status.address,
        status.problem,
        status.troubled_instances,
        status.fencing,
        status.fencing_unknown,
    )


@final
class NodeStatusPublisher(anyio.AsyncContextManagerMixin):
    """Keeps ``<ns>/supervise/<node>`` up to date on a lease it keeps alive.

    ``async with`` owns the keepalive task; leaving revokes the lease (the record
    vanishes at once on a clean stop). Use it as the publisher loop's status sink.
    """

    def __init__(
        self,
        *,
        store: EtcdStore,
        layout: KeyLayout,
        node: str,
        resolver: NodeAddressResolver,
        lease_ttl: timedelta,
        interval: timedelta,
        paused: PausedStateSource | None = None,
        postgres: PostgresProbe | None = None,
        constraints: MoveConstraintSource | None = None,
        metrics: SuperviseMetrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._key = layout.node_status(node)
        self._node = node
        self._resolver = resolver
        self._ttl = lease_ttl
        self._interval_s = interval.total_seconds()
        self._paused = paused
        self._postgres = postgres
        self._constraints = constraints
        self._cib_constraints: tuple[str, ...] = ()
        self._metrics = metrics
        self._monotonic = monotonic
        self._lease: int | None = None
        self._last: NodeStatus | None = None
        self._last_at = float("-inf")
        self._postgres_status: PostgresStatus | None = None
        self._postgres_problem: str | None = None
        self._address: str | None = None
        self._paused_value: bool | None = None

    @property
    def key(self) -> bytes:
        """Return the etcd key of this node's status."""
        return self._key

    @property
    def last(self) -> NodeStatus | None:
        """Return the last record written, or None."""
        return self._last

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[NodeStatusPublisher]:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_alive)
                # Slow facts (PostgreSQL probe, cibadmin, PgBouncer state) refresh in their
                # own task: the primary-detection loop that calls observe() never waits
                # for them. Entering waits for the first refresh so the first record
                # carries them.
                await tg.start(self._refresh_slow_facts_forever)
                yield self
                tg.cancel_scope.cancel()
        finally:
            lease, self._lease = self._lease, None
            if lease is not None:
                with anyio.move_on_after(_CLEANUP_S, shield=True):
                    try:
                        await self._store.revoke_lease(lease)
                    except EtcdError as exc:
                        log.warning("etcd.status.revoke_failed", error=str(exc))

    async def observe(self, observation: Observation) -> None:
        """Rewrite the record when the view changed or the interval elapsed.

        etcd trouble is logged, never raised: the next observation retries.
        """
        due = self._monotonic() - self._last_at >= self._interval_s
        address = await self._own_address(observation)
        problems = (self._postgres_problem,) if self._postgres_problem else ()
        status = build_node_status(
            observation,
            node=self._node,
            address=address,
            pgbouncer_paused=self._paused_value,
            postgres=self._postgres_status,
            problems=problems,
            cib_constraints=self._cib_constraints,
        )
        if (
            not due
            and self._last is not None
            and (_pacemaker_part(status) == _pacemaker_part(self._last))
        ):
            return
        try:
            await self._write(status)
        except EtcdError as exc:
            log.warning("etcd.status.publish_failed", key=self._key.decode(), error=str(exc))
            return
        self._last = status
        self._last_at = self._monotonic()
        if self._metrics is not None:
            self._metrics.publications.labels("status").inc()
            if status.pgbouncer_paused is None:
                self._metrics.pgbouncer_paused.clear()  # unknown: no series, no sentinel
            else:
                self._metrics.pgbouncer_paused.set(1 if status.pgbouncer_paused else 0)

    async def _own_address(self, observation: Observation) -> str | None:
        if self._address is not None or observation.state is None:
            return self._address
        me = observation.state.node(self._node)
        if me is None:
            return None
        try:
            self._address = await self._resolver.address_of(me)
        except NodeAddressUnknown as exc:
            log.debug("status.address_unknown", error=str(exc))
        return self._address

    async def _refresh_slow_facts_forever(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await self._refresh_slow_facts()
        task_status.started()
        while True:
            await anyio.sleep(self._interval_s)
            await self._refresh_slow_facts()

    async def _refresh_slow_facts(self) -> None:
        if self._paused is not None:
            self._paused_value = await self._paused.paused()
        if self._constraints is not None:
            try:
                self._cib_constraints = await self._constraints.move_constraints()
            except ConstraintsUnreadable as exc:
                # Keep the last known ids: dropping them would hide a leftover move.
                log.debug("pacemaker.constraints.unreadable", error=str(exc))
        if self._postgres is None:
            return
        try:
            self._postgres_status = await self._postgres.probe()
            self._postgres_problem = None
        except Exception as exc:  # noqa: BLE001 - any probe failure is a fact to publish
            # Whatever the probe raises (a bug included), a failed probe must never
            # stop supervise in a switchover: it is published as the node's problem.
            self._postgres_status = None
            self._postgres_problem = f"postgres: {exc}"
            log.debug("postgres.probe_failed", error=str(exc))

    async def _write(self, status: NodeStatus) -> None:
        value = status.to_json()
        if self._lease is None:
            self._lease = (await self._store.grant_lease(self._ttl)).id
        try:
            await self._store.put(self._key, value, lease=self._lease)
        except EtcdLeaseExpired:
            log.info("etcd.status.lease_lost", key=self._key.decode(), msg="granting a new one")
            self._lease = (await self._store.grant_lease(self._ttl)).id
            await self._store.put(self._key, value, lease=self._lease)

    async def _keep_alive(self) -> None:
        period = max(self._ttl.total_seconds() / 3, 0.5)
        while True:
            await anyio.sleep(period)
            lease = self._lease
            if lease is None:
                continue
            try:
                await self._store.keepalive_lease(lease)
            except EtcdLeaseExpired:
                log.info("etcd.status.lease_lost", key=self._key.decode())
                if self._lease == lease:
                    self._lease = None
                    self._last_at = float("-inf")  # rewrite at the next observation
            except EtcdError as exc:
                log.warning("etcd.status.keepalive_failed", error=str(exc))
