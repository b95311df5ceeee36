"""Build every adapter of pgcm-supervise and run its parts under one task group.

The only module that constructs real adapters: etcd, PgBouncer admin consoles,
the crm_mon reader, the node address resolver, the PostgreSQL probe. It runs:

* the failover gRPC API (``server.py`` / ``grpc_serve.py``), after crash recovery;
* the metrics endpoint (opt-in);
* the nudge listener for the Pacemaker alert agent;
* the publisher loop (primary address + record) with the NodeStatus publisher;
* systemd's readiness (after the first publication attempt) and watchdog pings.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial
from typing import final

import anyio
import structlog
from anyio.abc import TaskStatus
from grpclib._typing import IServable

from pgcm_common.etcd import EtcdStore, open_etcd, read_lock_status
from pgcm_common.hostport import parse_bind_address
from pgcm_common.lifecycle import sd_notify, settle_memory
from pgcm_common.metrics import serve_metrics
from pgcm_common.pacemaker import (
    CorosyncNodeAddresses,
    CrmMon,
    CrmMonOptions,
    NodeAddressResolver,
    StaticNodeAddresses,
)
from pgcm_common.pgbouncer import PgBouncerAdmin, admins_for
from pgcm_common.records import KeyLayout
from pgcm_supervise.constraints import CibConstraintReader, CibConstraintsOptions
from pgcm_supervise.grpc_serve import GrpcServerOptions, serve_grpc
from pgcm_supervise.hold import HoldKeeper
from pgcm_supervise.maintenance import CrmAttributeMaintenance
from pgcm_supervise.metrics import SuperviseMetrics
from pgcm_supervise.nudge import Wakeup, serve_nudges
from pgcm_supervise.pacemaker_control import CrmResourceControl
from pgcm_supervise.pacemaker_tool import ToolOptions
from pgcm_supervise.publisher import PrimaryPublisher, serve_publisher
from pgcm_supervise.security import SecurityOptions
from pgcm_supervise.server import FailoverServer, FailoverServerOptions, SystemClock
from pgcm_supervise.settings import SuperviseSettings
from pgcm_supervise.status import (
    LocalPostgresProbe,
    NodeStatusPublisher,
    PostgresProbe,
)

__all__ = ["build_resolver", "serve"]

log = structlog.get_logger("pgcm.supervise.app")


def build_resolver(settings: SuperviseSettings) -> NodeAddressResolver:
    """Return the node -> address resolver the settings ask for."""
    source = settings.address_source
    if source == "static" or (source == "auto" and settings.node_addresses):
        return StaticNodeAddresses(settings.node_addresses)
    return CorosyncNodeAddresses(
        command_prefix=tuple(settings.command_prefix),
        executable=settings.corosync_cfgtool_path,
    )


def build_crm_mon(settings: SuperviseSettings) -> CrmMon:
    """Return the crm_mon reader (it bounds every read by ``crm_mon_timeout``)."""
    return CrmMon(
        CrmMonOptions(
            resource_id=settings.resource_id,
            command_prefix=tuple(settings.command_prefix),
            executable=settings.crm_mon_path,
            timeout=settings.crm_mon_timeout,
        )
    )


def build_constraints(settings: SuperviseSettings) -> CibConstraintReader:
    """Return the CIB move-constraint reader (crm_mon does not show ``cli-prefer-*``)."""
    resources = (settings.resource_id,) + (
        (settings.clone_id,) if settings.clone_id is not None else ()
    )
    return CibConstraintReader(
        CibConstraintsOptions(
            resources=resources,
            command_prefix=tuple(settings.command_prefix),
            timeout=settings.crm_mon_timeout,
        )
    )


@final
class _Heartbeat:
    """When the publisher loop last completed a cycle (the watchdog's liveness signal)."""

    def __init__(self) -> None:
        self.at = time.monotonic()

    def beat(self) -> None:
        self.at = time.monotonic()


async def _serve_watchdog(heartbeat: _Heartbeat, period: timedelta) -> None:
    """Ping systemd's watchdog while the publisher loop is alive.

    A wedged publisher (a hung etcd call, a crm_mon that outlives its timeout) stops the
    pings, so systemd restarts the service: a stuck supervise is worse than a restart.
    """
    interval = period.total_seconds() / 2
    while True:
        if time.monotonic() - heartbeat.at < period.total_seconds():
            sd_notify("WATCHDOG=1")
        else:
            log.warning("watchdog.skip", msg="publisher loop has not completed a cycle")
        await anyio.sleep(interval)


@final
class _OwnPauseState:
    """Our own pause, as the failover server's pause controller knows it.

    PgBouncer 1.18 cannot report a global PAUSE on its console, so what this process
    paused is the best knowledge there is (a PAUSE sent by hand is not seen).
    """

    def __init__(self, api: FailoverServer) -> None:
        self._api = api

    async def paused(self) -> bool | None:
        return self._api.pauser.paused

    async def resume_for_shutdown(self) -> None:
        await self._api.resume_for_shutdown()


@asynccontextmanager
async def _open_failover_api(
    settings: SuperviseSettings,
    *,
    store: EtcdStore,
    layout: KeyLayout,
    admins: tuple[PgBouncerAdmin, ...],
    crm: CrmMon,
    resolver: NodeAddressResolver,
    metrics: SuperviseMetrics,
) -> AsyncGenerator[_OwnPauseState]:
    """Run the failover gRPC API (after crash recovery); yield its pause state.

    The single place where the failover API (server.py, grpc_serve.py) is wired in.
    """

    async def etcd_probe() -> object:
        return await store.get(layout.master)

    async def lock_is_held() -> bool:
        return await read_lock_status(store, layout.lock) is not None

    def on_pause_state(paused: bool) -> None:  # noqa: FBT001 - the server's callback shape
        metrics.pgbouncer_paused.set(1 if paused else 0)

    options = FailoverServerOptions(
        clone_id=settings.clone_id,
        cleanup_timeout=settings.shutdown_grace,
        reconcile_interval=settings.retry_interval,
        max_pause_expiry=settings.max_pause_expiry,
        migrate_read_ahead=settings.migrate_read_ahead,
        on_pause_state=on_pause_state,
        maintenance=CrmAttributeMaintenance(
            ToolOptions(command_prefix=tuple(settings.command_prefix))
        ),
    )
    control = CrmResourceControl(ToolOptions(command_prefix=tuple(settings.command_prefix)))
    server = FailoverServer(
        admins,
        crm,
        control,
        addresses=resolver,
        etcd_probe=etcd_probe,
        clock=SystemClock(),
        options=options,
    )
    async with server as api, anyio.create_task_group() as tg:
        # Crash recovery: the first try runs before the API listens; while a failover
        # lock is held (or etcd is down) it keeps retrying in the background.
        await tg.start(api.serve_reconcile, lock_is_held)
        await _start_grpc(tg, api, settings, metrics)
        yield _OwnPauseState(api)
        tg.cancel_scope.cancel()


async def _start_grpc(
    tg: anyio.abc.TaskGroup, api: IServable, settings: SuperviseSettings, metrics: SuperviseMetrics
) -> int:
    """Start the gRPC listener in ``tg``; return the bound port."""
    tokens = dict(settings.tokens)
    if settings.token is not None:
        tokens.setdefault("token", settings.token)
    bind = parse_bind_address(settings.bind_address)
    options = GrpcServerOptions(
        host=bind.bind_host,
        port=bind.port,
        security=SecurityOptions(
            tls_cert_file=settings.tls_cert_file,
            tls_key_file=settings.tls_key_file,
            tls_client_ca_file=settings.tls_client_ca_file,
            tokens=tokens,
            insecure=settings.insecure,
        ),
        registry=metrics.registry,
        shutdown_grace=settings.shutdown_grace,
    )
    bound: int = await tg.start(serve_grpc, [api], options)
    return bound


async def serve(
    settings: SuperviseSettings,
    *,
    watchdog: timedelta | None = None,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run pgcm-supervise until cancelled.

    Readiness (``task_status.started`` and systemd's ``READY=1``): after the first
    publication attempt, with the gRPC API listening.

    Raises:
        ConfigError: a setting fails when used (nudge socket directory, TLS files,
            a metrics_address that cannot be bound).

    Cancellation:
        Every part unwinds through its own shielded cleanup: PgBouncer is resumed if we
        paused it, the status lease is revoked, sockets are closed and removed.
    """
    metrics = SuperviseMetrics(export=settings.metrics_address is not None)
    layout = settings.cluster.layout
    crm = build_crm_mon(settings)
    resolver = build_resolver(settings)
    admins = admins_for(settings.pgbouncer)
    wakeup = Wakeup()
    heartbeat = _Heartbeat()
    postgres: PostgresProbe | None = None
    if settings.postgres_dsn is not None:
        postgres = LocalPostgresProbe(settings.postgres_dsn, timeout=settings.postgres_timeout)
    async with open_etcd(settings.etcd) as store, anyio.create_task_group() as tg:
        if settings.metrics_address is not None and metrics.registry is not None:
            await tg.start(serve_metrics, metrics.registry, settings.metrics_address)
        if settings.nudge_socket is not None:
            await tg.start(
                partial(
                    serve_nudges,
                    settings.nudge_socket,
                    wakeup,
                    group=settings.nudge_socket_group,
                    metrics=metrics,
                )
            )
        async with (
            _open_failover_api(
                settings,
                store=store,
                layout=layout,
                admins=admins,
                crm=crm,
                resolver=resolver,
                metrics=metrics,
            ) as paused,
            NodeStatusPublisher(
                store=store,
                layout=layout,
                node=settings.node_name,
                resolver=resolver,
                lease_ttl=settings.status_lease_ttl,
                interval=settings.status_interval,
                paused=paused,
                postgres=postgres,
                constraints=build_constraints(settings),
                metrics=metrics,
            ) as status,
        ):
            publisher = PrimaryPublisher(
                store=store,
                layout=layout,
                resolver=resolver,
                writer=settings.node_name,
                reassert_interval=settings.reassert_interval,
                metrics=metrics,
            )
            async with anyio.create_task_group() as loops:
                await loops.start(
                    partial(
                        serve_publisher,
                        reader=crm,
                        publisher=publisher,
                        wakeup=wakeup,
                        interval=settings.crm_mon_interval,
                        retry_interval=settings.retry_interval,
                        transition_interval=settings.crm_mon_transition_interval,
                        promote_notice=settings.publish_on_promote_notice,
                        status=status,
                        hold=HoldKeeper(
                            store=store,
                            layout=layout,
                            writer=settings.node_name,
                            timeout=settings.hold_timeout,
                            metrics=metrics,
                        ),
                        metrics=metrics,
                        on_cycle=heartbeat.beat,
                    )
                )
                sd_notify("READY=1")
                log.info("supervise.ready", node=settings.node_name)
                # Start-up is over: drop its garbage and keep full collections short.
                settle_memory()
                if watchdog is not None:
                    loops.start_soon(_serve_watchdog, heartbeat, watchdog)
                task_status.started()
                try:
                    await anyio.sleep_forever()
                finally:
                    sd_notify("STOPPING=1")
                    # Resume first: clients must not wait on a paused
                    # PgBouncer while gRPC drains and the status lease is revoked.
                    with anyio.move_on_after(settings.shutdown_grace.total_seconds(), shield=True):
                        await paused.resume_for_shutdown()
        tg.cancel_scope.cancel()
