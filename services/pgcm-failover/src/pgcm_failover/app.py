"""The only place that builds adapters: etcd, the supervise clients, and the commands.

``cli.py`` parses settings and calls one of :func:`switchover`, :func:`make_plan`,
:func:`collect_status` or :func:`cleanup` with :class:`Adapters` from
:func:`open_adapters` (tests pass fakes instead).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import final

import anyio
import structlog

from pgcm_common.errors import EtcdError
from pgcm_common.etcd import EtcdStore, open_etcd, read_lock_status
from pgcm_common.records import (
    HoldRecord,
    KeyLayout,
    MaintenanceRecord,
    PrimaryRecord,
    RecordError,
    now_utc,
)
from pgcm_failover.advice import pacemaker_attention
from pgcm_failover.client import ClientTls, SuperviseEndpoint, make_ssl_context
from pgcm_failover.cluster import (
    ClusterSnapshot,
    NodeStatusCluster,
    check_preflight,
    read_snapshot,
    settle_problems,
)
from pgcm_failover.coordinator import EtcdCoordinator, read_acks
from pgcm_failover.errors import CleanupRefused, ClientsFailed, FailoverAborted
from pgcm_failover.maintenance import (
    MaintenanceClient,
    maintenance_refusal,
    maintenance_state,
    read_maintenance,
)
from pgcm_failover.pipeline import (
    Clock,
    Health,
    Phase,
    Pipeline,
    PipelineOptions,
    Report,
    SuperviseClient,
)
from pgcm_failover.report import (
    CleanupResult,
    EndpointHealth,
    NodeReplication,
    Plan,
    ProxyRow,
    Status,
)
from pgcm_failover.settings import FailoverSettings

__all__ = [
    "Adapters",
    "AdaptersFactory",
    "Switchover",
    "cleanup",
    "collect_status",
    "layout_of",
    "make_plan",
    "node_replication",
    "open_adapters",
    "pipeline_options",
]

log = structlog.get_logger("pgcm_failover.app")


@final
@dataclass(frozen=True, slots=True)
class Adapters:
    """The collaborators every command needs."""

    store: EtcdStore
    clients: Sequence[SuperviseClient]
    maintenance: Sequence[MaintenanceClient] = ()


AdaptersFactory = Callable[[FailoverSettings], AbstractAsyncContextManager[Adapters]]


@asynccontextmanager
async def open_adapters(settings: FailoverSettings) -> AsyncIterator[Adapters]:
    """Connect to etcd and describe every supervise endpoint (closed on exit).

    Raises:
        EtcdError: etcd cannot be reached.
        OSError, ssl.SSLError: TLS files cannot be read.
    """
    ssl_context = None
    if settings.tls_ca_file is not None or settings.tls_cert_file is not None:
        tls = ClientTls(settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file)
        ssl_context = await anyio.to_thread.run_sync(make_ssl_context, tls)
    token = None if settings.token is None else settings.token.get_secret_value()
    with ExitStack() as stack:
        clients = [
            stack.enter_context(SuperviseEndpoint(ep, ssl_context=ssl_context, token=token))
            for ep in settings.endpoints
        ]
        async with open_etcd(settings.etcd) as store:
            yield Adapters(store=store, clients=clients, maintenance=clients)


def layout_of(settings: FailoverSettings) -> KeyLayout:
    """Return the cluster's etcd key layout."""
    return settings.cluster.layout


def pipeline_options(settings: FailoverSettings, target: str | None) -> PipelineOptions:
    """Map settings onto the pipeline's bounds."""
    return PipelineOptions(
        health_check_timeout=settings.health_check_timeout,
        lock_timeout=settings.lock_timeout,
        pause_timeout=settings.pause_timeout,
        pause_expiry=settings.pause_expiry,
        resume_timeout=settings.resume_timeout,
        migrate_timeout=settings.pacemaker_timeout,
        settle_timeout=settings.settle_timeout,
        cleanup_grace=settings.cleanup_grace,
        proxy_ack_timeout=settings.proxy_ack_timeout,
        target_node=target,
    )


def _cluster(store: EtcdStore, settings: FailoverSettings) -> NodeStatusCluster:
    return NodeStatusCluster(
        store,
        layout_of(settings),
        max_age=settings.status_max_age,
        poll_interval=settings.poll_interval,
        max_lag_bytes=settings.max_lag_bytes,
    )


@final
@dataclass(slots=True)
class Switchover:
    """One switchover run; ``report`` and ``error`` stay readable after cancellation."""

    settings: FailoverSettings
    target: str | None = None
    on_phase: Callable[[Phase], None] | None = None
    clock: Clock = time.monotonic
    report: Report = field(default_factory=Report)
    error: Exception | None = None
    finished: bool = False

    async def run(self, adapters: Adapters) -> None:
        """Run the pipeline; record its report and error instead of raising them.

        Cancellation:
            The pipeline's undos run (shielded) before the cancellation propagates;
            ``finished`` stays False so the caller knows it was interrupted.
        """
        settings = self.settings
        refusal = maintenance_refusal(
            await _maintenance_or_none(adapters.store, layout_of(settings))
        )
        if refusal is not None:
            self.error = FailoverAborted(refusal)
            self.report.error = refusal
            self.finished = True
            return
        coordinator = EtcdCoordinator(
            adapters.store,
            layout_of(settings),
            lock_ttl=settings.lock_ttl,
            release_grace=settings.cleanup_grace,
        )
        async with coordinator:
            pipeline = Pipeline(
                adapters.clients,
                coordinator,
                _cluster(adapters.store, settings),
                pipeline_options(settings, self.target),
                clock=self.clock,
                on_phase=self.on_phase,
            )
            self.report = pipeline.report
            with anyio.CancelScope() as scope:
                # Without the lock nobody stops a second switchover or supervise's orphan
                # reconciler: unwind (undos run) rather than carry on unprotected.
                coordinator.lock.cancel_on_loss(scope)
                try:
                    await pipeline.run()
                except Exception as exc:  # noqa: BLE001 - recorded; the CLI maps it to an exit code
                    self.error = exc
            if scope.cancelled_caught:
                self.error = FailoverAborted("the etcd lock was lost during the switchover")
                self.report.error = str(self.error)
            self.finished = True


async def _health(clients: Sequence[SuperviseClient], limit_s: float) -> tuple[EndpointHealth, ...]:
    results: dict[str, EndpointHealth] = {}

    async def one(client: SuperviseClient) -> None:
        try:
            with anyio.fail_after(limit_s):
                health: Health = await client.health_check()
            results[client.endpoint] = EndpointHealth(
                client.endpoint, health.healthy, health.reasons
            )
        except Exception as exc:  # noqa: BLE001 - shown per endpoint
            results[client.endpoint] = EndpointHealth(
                client.endpoint, healthy=False, reasons=(str(exc) or type(exc).__name__,)
            )

    async with anyio.create_task_group() as tg:
        for client in clients:
            tg.start_soon(one, client)
    return tuple(results[c.endpoint] for c in clients)


async def make_plan(adapters: Adapters, settings: FailoverSettings, target: str | None) -> Plan:
    """Describe what a switchover now would do; change nothing (``--dry-run``).

    Raises:
        EtcdError: etcd cannot be read.
    """
    layout = layout_of(settings)
    endpoints = await _health(adapters.clients, settings.health_check_timeout.total_seconds())
    snapshot = await read_snapshot(adapters.store, layout, max_age=settings.status_max_age)
    acks = read_acks(await adapters.store.get_prefix(layout.proxies_prefix))
    proxies = tuple(
        ProxyRow(s.proxy_id, s.ack) for s in sorted(acks.values(), key=lambda s: s.proxy_id)
    )
    refused = None
    chosen = reason = None
    notes: tuple[str, ...] = ()
    try:
        result = check_preflight(
            snapshot,
            target,
            max_transaction_age=settings.pause_timeout,
            max_lag_bytes=settings.max_lag_bytes,
            max_age=settings.status_max_age,
        )
        chosen, reason, notes = result.target, result.reason, result.notes
    except FailoverAborted as exc:
        refused = str(exc)
    lock = await read_lock_status(adapters.store, layout.lock)
    if lock is not None:
        who = lock.holder.holder if lock.holder else "an unreadable holder"
        refused = refused or f"the failover lock is held by {who}"
    refused = maintenance_refusal(await _maintenance_or_none(adapters.store, layout)) or refused
    primary = snapshot.primary
    facts = None if primary is None else snapshot.statuses.get(primary)
    pg = None if facts is None else facts.postgres
    replication = (
        ()
        if pg is None
        else tuple((r.application_name, r.state, r.lag_bytes) for r in pg.replication)
    )
    return Plan(
        endpoints=endpoints,
        old_primary=primary,
        target=chosen,
        reason=reason,
        refused=refused,
        proxies=proxies,
        replication=replication,
        oldest_transaction_age_s=None if pg is None else pg.oldest_transaction_age_s,
        notes=notes,
    )


async def _maintenance_or_none(store: EtcdStore, layout: KeyLayout) -> MaintenanceRecord | None:
    try:
        return await maintenance_state(store, layout)
    except EtcdError as exc:
        # Not knowable now. The run goes on to its health check, which reports etcd, and
        # the preflight reads the record again once the lock (held in etcd) is taken.
        log.warning("failover.maintenance.unknown", error=str(exc))
        return None


def node_replication(snapshot: ClusterSnapshot) -> dict[str, NodeReplication]:
    """Return each node's timeline and replication state from the published facts.

    The timeline comes from the node's own record; the replication state, sync state
    and lag from the primary's ``pg_stat_replication`` row whose ``application_name``
    is the node's name (as PAF requires). Nodes without any published fact are left out.
    """
    primary = snapshot.primary
    primary_status = None if primary is None else snapshot.statuses.get(primary)
    primary_pg = None if primary_status is None else primary_status.postgres
    peers = {} if primary_pg is None else {r.application_name: r for r in primary_pg.replication}
    found: dict[str, NodeReplication] = {}
    for node in snapshot.nodes:
        own = snapshot.statuses.get(node.name)
        pg = None if own is None else own.postgres
        timeline = None if pg is None else pg.timeline
        peer = peers.get(node.name)
        if node.name == primary and pg is not None:
            found[node.name] = NodeReplication(timeline=timeline, state="primary")
        elif peer is not None:
            found[node.name] = NodeReplication(
                timeline=timeline,
                state=peer.state,
                sync_state=peer.sync_state,
                lag_bytes=peer.lag_bytes,
                lag_s=peer.lag_s,
            )
        elif node.name != primary and primary_pg is not None:
            found[node.name] = NodeReplication(timeline=timeline, state="not replicating")
        elif pg is not None:
            found[node.name] = NodeReplication(timeline=timeline)
    return found


async def collect_status(adapters: Adapters, settings: FailoverSettings) -> Status:
    """Read everything ``status`` shows from etcd (read-only).

    Raises:
        EtcdError: etcd cannot be read.
    """
    store = adapters.store
    layout = layout_of(settings)
    snapshot = await read_snapshot(store, layout, max_age=settings.status_max_age)
    problems: list[str] = []
    master = await store.get(layout.master)
    record_kv = await store.get(layout.master_record)
    record = None
    if record_kv is not None:
        try:
            record = PrimaryRecord.from_json(record_kv.key, record_kv.value)
        except RecordError as exc:
            problems.append(str(exc))
    acks = read_acks(await store.get_prefix(layout.proxies_prefix))
    lock = await read_lock_status(store, layout.lock)
    maintenance = None
    try:
        maintenance = await read_maintenance(store, layout)
    except RecordError as exc:
        problems.append(str(exc))
    hold = None
    if (hold_kv := await store.get(layout.hold)) is not None:
        try:
            hold = HoldRecord.from_json(hold_kv.key, hold_kv.value)
        except RecordError as exc:
            problems.append(str(exc))
    holder = None
    if lock is not None and lock.holder is not None:
        h = lock.holder
        holder = f"{h.holder} (pid {h.pid} on {h.hostname}, since {h.acquired_at.isoformat()})"
    view = snapshot.view
    if view is None:
        problems.append("no fresh NodeStatus with quorum in etcd")
    if snapshot.invalid:
        problems.append(f"unreadable NodeStatus records: {', '.join(snapshot.invalid)}")
    observed = None if record is None else record.observed_at
    return Status(
        nodes=tuple(sorted(snapshot.nodes, key=lambda n: n.name)),
        quorum={name: s.with_quorum for name, s in snapshot.statuses.items()},
        view_from=None if view is None else view.node,
        dc=None if view is None else view.dc,
        etcd_primary=None if master is None else master.value.decode(errors="replace"),
        primary_record_node=None if record is None else record.node,
        primary_observed_at=observed,
        primary_age_s=None if observed is None else (now_utc() - observed).total_seconds(),
        proxies=tuple(
            ProxyRow(s.proxy_id, s.ack) for s in sorted(acks.values(), key=lambda s: s.proxy_id)
        ),
        pgbouncer_paused={name: s.pgbouncer_paused for name, s in snapshot.statuses.items()},
        lock_holder=holder,
        lock_token=None if lock is None else lock.fencing_token,
        move_constraints=() if view is None else view.move_constraints,
        stale=snapshot.stale,
        problems=tuple(problems),
        replication=node_replication(snapshot),
        maintenance=maintenance,
        attention=pacemaker_attention(view, tuple(snapshot.statuses.values())),
        hold=hold,
    )


async def cleanup(adapters: Adapters, settings: FailoverSettings) -> CleanupResult:
    """Remove what a killed switchover left: paused PgBouncers and a move constraint.

    Takes the lock first, so no switchover starts meanwhile. Clears a move constraint
    only when Pacemaker has settled (clearing earlier moves the primary back).

    Raises:
        CleanupRefused: a live switchover holds the lock.
        EtcdError: etcd cannot be reached.
    """
    layout = layout_of(settings)
    status = await read_lock_status(adapters.store, layout.lock)
    if status is not None:
        # The key only exists while its lease is alive: its holder is still running
        # (or died less than one TTL ago).
        who = status.holder.holder if status.holder else "an unreadable holder"
        raise CleanupRefused(
            f"the failover lock is held by {who} (a switchover is running); try again once "
            f"it is free (at most lock_ttl={settings.lock_ttl.total_seconds():g}s after it died)"
        )
    done: list[str] = []
    needs_human: list[str] = []
    coordinator = EtcdCoordinator(
        adapters.store, layout, lock_ttl=settings.lock_ttl, release_grace=settings.cleanup_grace
    )
    obtained = False
    async with coordinator:
        # A refusal is raised after the block: raised inside, the lock's task group
        # would hand it on wrapped in an ExceptionGroup.
        with anyio.move_on_after(settings.lock_timeout.total_seconds()):
            await coordinator.acquire_lock()
            obtained = True
        if obtained:
            done.append("took the failover lock")
            await _resume_all(adapters.clients, settings, done, needs_human)
            await _clear_constraint(adapters, settings, done, needs_human)
    if not obtained:
        raise CleanupRefused(
            f"could not take the failover lock within "
            f"lock_timeout={settings.lock_timeout.total_seconds():g}s (another switchover "
            f"or cleanup holds it)"
        )
    return CleanupResult(done=tuple(done), needs_human=tuple(needs_human))


async def _resume_all(
    clients: Sequence[SuperviseClient],
    settings: FailoverSettings,
    done: list[str],
    needs_human: list[str],
) -> None:
    failures: dict[str, Exception] = {}

    async def one(client: SuperviseClient) -> None:
        try:
            with anyio.fail_after(settings.resume_timeout.total_seconds()):
                await client.resume()
        except Exception as exc:  # noqa: BLE001 - aggregated below
            failures[client.endpoint] = exc

    async with anyio.create_task_group() as tg:
        for client in clients:
            tg.start_soon(one, client)
    resumed = [c.endpoint for c in clients if c.endpoint not in failures]
    if resumed:
        done.append(f"resumed PgBouncer via {', '.join(resumed)}")
    if failures:
        needs_human.append(str(ClientsFailed("resume", failures)))


async def _clear_constraint(
    adapters: Adapters, settings: FailoverSettings, done: list[str], needs_human: list[str]
) -> None:
    layout = layout_of(settings)
    snapshot = await read_snapshot(adapters.store, layout, max_age=settings.status_max_age)
    view = snapshot.view
    if view is None:
        needs_human.append(
            "no fresh NodeStatus with quorum: cannot tell whether a move constraint is left"
        )
        return
    if not view.move_constraints:
        return
    leftover = ", ".join(view.move_constraints)
    primary = view.primary
    problems = ["no primary"] if primary is None else settle_problems(snapshot, primary)
    if problems:
        needs_human.append(
            f"move constraint {leftover} left in place: Pacemaker has not settled "
            f"({'; '.join(problems)}); run cleanup again later"
        )
        return
    failures: dict[str, Exception] = {}
    for client in adapters.clients:
        try:
            with anyio.fail_after(settings.pacemaker_timeout.total_seconds()):
                await client.unmigrate()
        except Exception as exc:  # noqa: BLE001 - aggregated below
            failures[client.endpoint] = exc
        else:
            done.append(f"cleared move constraint {leftover} via {client.endpoint}")
            return
    needs_human.append(str(ClientsFailed("unmigrate", failures)))
