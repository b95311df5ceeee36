"""Wire pgcm-proxy together: the only module that builds adapters.

``serve`` loads the template (a broken one is a ``ConfigError``: exit 2), opens etcd,
follows the primary's key with a resilient watch plus a periodic poll, and runs the
reconcile loop that renders pgbouncer.ini, RELOADs PgBouncer, confirms the routing
and acknowledges under ``<ns>/proxies/<id>``.
"""

from __future__ import annotations

import stat
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from pathlib import Path

import anyio
import structlog
from anyio.abc import TaskStatus

from pgcm_common.backoff import Backoff
from pgcm_common.errors import ConfigError, EtcdError
from pgcm_common.etcd import Deleted, EtcdStore, WatchEvent, follow_keys, open_etcd
from pgcm_common.lifecycle import sd_notify, settle_memory
from pgcm_common.metrics import serve_metrics
from pgcm_common.pausing import PauseController
from pgcm_common.pgbouncer import admins_for, routing_consoles_for
from pgcm_common.records import KeyLayout
from pgcm_proxy.ack import AckPublisher
from pgcm_proxy.address import parse_primary_address
from pgcm_proxy.errors import RejectedAddress, TemplateError
from pgcm_proxy.hold import Holder
from pgcm_proxy.metrics import ProxyMetrics
from pgcm_proxy.reconcile import (
    DesiredState,
    Reconciler,
    offer_and_log,
    sync_config,
)
from pgcm_proxy.settings import ProxySettings
from pgcm_proxy.template import ConfigTemplate
from pgcm_proxy.writer import DEFAULT_NEW_FILE_MODE, ConfigFile

__all__ = ["load_template", "serve"]

log = structlog.get_logger("pgcm.proxy")

# Withdrawing the ack on exit is worth a short wait, not a hang: a proxy that cannot
# reach etcd leaves the key to expire with its lease.
_REVOKE_GRACE_S = 2.0


async def load_template(path: Path) -> ConfigTemplate:
    """Read and validate the pgbouncer.ini template.

    Raises:
        ConfigError: the file cannot be read.
        TemplateError: it has an unsupported action, no placeholder, or no
            ``[databases]`` entry using the placeholder (routing could not be confirmed).
    """
    try:
        source = await anyio.Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("pgbouncer_config_template_file", f"cannot read {path}: {exc}") from exc
    template = ConfigTemplate.parse(source, origin=str(path))
    if not template.routed_databases():
        raise TemplateError(str(path), None, "no [databases] entry uses {{.Host}}")
    return template


async def _template_mode(path: Path) -> int:
    """Return the template's permission bits: a new pgbouncer.ini gets the same.

    Read and write bits only (a config file is never executable or set-id). The
    template was read a moment ago; should it vanish meanwhile, 0640 is used.
    """
    try:
        status = await anyio.Path(path).stat()
    except OSError:
        return DEFAULT_NEW_FILE_MODE
    return stat.S_IMODE(status.st_mode) & 0o666


async def serve(
    settings: ProxySettings,
    *,
    watchdog: timedelta | None = None,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the proxy until cancelled.

    ``task_status.started()`` is called once the watch on the primary's key is
    established; READY=1 goes to systemd after the first confirmed apply.

    Raises:
        ConfigError: bad template, proxy id or metrics address (exit 2).

    Cancellation:
        Revokes the acknowledgement's lease (shielded, bounded) and closes etcd.
    """
    template = await load_template(settings.pgbouncer_config_template_file)
    layout = settings.cluster.layout
    try:
        ack_key = layout.proxy_ack(settings.proxy_id)
    except ValueError as exc:
        raise ConfigError("proxy_id", str(exc)) from exc
    metrics = ProxyMetrics(export=settings.metrics_address is not None)
    async with anyio.create_task_group() as tg:
        if settings.metrics_address is not None:
            await tg.start(serve_metrics, metrics.registry, settings.metrics_address)
        async with open_etcd(settings.etcd) as store:
            acks = AckPublisher(store, ack_key, settings.ack_lease_ttl)
            try:
                await _run(
                    settings,
                    store,
                    layout=layout,
                    template=template,
                    acks=acks,
                    metrics=metrics,
                    watchdog=watchdog,
                    task_status=task_status,
                )
            finally:
                with anyio.move_on_after(_REVOKE_GRACE_S, shield=True):
                    try:
                        await acks.revoke()
                    except EtcdError as exc:
                        log.warning("proxy.ack.revoke_error", error=str(exc))
        tg.cancel_scope.cancel()  # the proxy has stopped: so does its metrics endpoint


async def _run(
    settings: ProxySettings,
    store: EtcdStore,
    *,
    layout: KeyLayout,
    template: ConfigTemplate,
    acks: AckPublisher,
    metrics: ProxyMetrics,
    watchdog: timedelta | None,
    task_status: TaskStatus[None],
) -> None:
    state = DesiredState()
    admins = routing_consoles_for(settings.pgbouncer)
    config = ConfigFile(
        settings.pgbouncer_config_file,
        new_file_mode=await _template_mode(settings.pgbouncer_config_template_file),
    )
    holder = Holder(
        PauseController(admins_for(settings.pgbouncer)),
        limit=settings.hold_limit,
        published_host=partial(_published_host, store, layout.master),
        metrics=metrics,
    )
    reconciler = Reconciler(
        proxy_id=settings.proxy_id,
        template=template,
        config=config,
        admins=admins,
        acks=acks,
        metrics=metrics,
        on_routed=holder.applied,
    )
    log.info(
        "proxy.start",
        key=layout.master.decode(),
        ack_key=layout.proxy_ack(settings.proxy_id).decode(),
        config_file=str(settings.pgbouncer_config_file),
        pgbouncers=[str(admin.endpoint) for admin in admins],
        databases=sorted(template.routed_databases()),
    )
    await _tidy(config.remove_leftovers, "temporary files of an earlier run")
    try:
        async with anyio.create_task_group() as tg:
            if watchdog is not None:
                tg.start_soon(_ping_watchdog, watchdog / 2)  # twice per timeout, as systemd asks
            tg.start_soon(acks.keep_alive)
            tg.start_soon(holder.run)
            tg.start_soon(
                partial(
                    _sync_config,
                    state,
                    reconciler,
                    metrics,
                    backoff=_backoff(settings),
                    apply_timeout_s=settings.apply_timeout.total_seconds(),
                )
            )
            await tg.start(
                sync_primary_key, store, layout.master, state, metrics, _backoff(settings)
            )
            if settings.hold_limit > timedelta(0):
                tg.start_soon(follow_hold, store, layout, holder, _backoff(settings))
            tg.start_soon(
                poll_primary_key,
                store,
                layout.master,
                state,
                metrics,
                settings.poll_interval.total_seconds(),
            )
            task_status.started()
    finally:
        with anyio.CancelScope(shield=True):
            await _tidy(config.close, "the spare config file")
            for admin in admins:
                await admin.aclose()


async def _tidy(remove: Callable[[], Awaitable[None]], what: str) -> None:
    """Remove our own temporary files; a failure is logged, never fatal."""
    try:
        await remove()
    except OSError as exc:
        log.warning("pgbouncer.config.cleanup_error", what=what, error=str(exc))


def _backoff(settings: ProxySettings) -> Backoff:
    return Backoff(initial=settings.retry_interval, maximum=settings.retry_max_interval)


async def _sync_config(
    state: DesiredState,
    reconciler: Reconciler,
    metrics: ProxyMetrics,
    *,
    backoff: Backoff,
    apply_timeout_s: float,
) -> None:
    await sync_config(
        state,
        reconciler,
        metrics,
        backoff=backoff,
        apply_timeout_s=apply_timeout_s,
        on_success=_ready_once(),
    )


def _ready_once() -> Callable[[], None]:
    ready = False

    def on_success() -> None:
        nonlocal ready
        if not ready:
            ready = True
            sd_notify("READY=1")
            log.info("proxy.ready", msg="first apply confirmed; ready")
            # Start-up is over: drop its garbage and keep full collections short.
            settle_memory()

    return on_success


async def _ping_watchdog(interval: timedelta) -> None:
    while True:
        sd_notify("WATCHDOG=1")
        await anyio.sleep(interval.total_seconds())


async def _read_key(
    store: EtcdStore, key: bytes, state: DesiredState, metrics: ProxyMetrics, source: str
) -> int:
    """Offer the key's current state (a missing key as a deletion); return the revision."""
    listing = await store.get_prefix(key)
    found = next((kv for kv in listing.items if kv.key == key), None)
    offer_and_log(state, found or Deleted(key, listing.revision), metrics, source)
    return listing.revision


async def sync_primary_key(
    store: EtcdStore,
    key: bytes,
    state: DesiredState,
    metrics: ProxyMetrics,
    backoff: Backoff,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Read the key, then watch it from the listing's revision + 1, until cancelled.

    The watch itself re-watches after etcd restarts or hangs and re-lists after
    compaction (pgcm_common.etcd.follow_keys); this loop only retries the first read.
    Each event is offered in the watching task itself: a hand-over to another task
    would add to the time from etcd put to rewritten file.

    Cancellation:
        Closes the watch.
    """

    async def offer(event: WatchEvent) -> None:
        offer_and_log(state, event, metrics, "watch")

    while True:
        try:
            revision = await _read_key(store, key, state, metrics, "list")
        except EtcdError as exc:
            delay = backoff.next_delay()
            log.warning("etcd.watch.error", error=str(exc), retry_in=round(delay, 3))
            await anyio.sleep(delay)
            continue
        backoff.reset()
        async with anyio.create_task_group() as tg:
            await tg.start(partial(follow_keys, store, key, revision + 1, offer))
            log.info("etcd.watch.start", key=key.decode(), revision=revision + 1)
            task_status.started()
        return  # pragma: no cover - follow_keys only returns when cancelled


async def _published_host(store: EtcdStore, key: bytes) -> str | None:
    """The primary's address in etcd now, as the proxy would write it (None: absent).

    Raises:
        EtcdError: etcd cannot say.
    """
    found = await store.get(key)
    if found is None:
        return None
    try:
        return parse_primary_address(found.value).host
    except RejectedAddress:
        return None


async def follow_hold(
    store: EtcdStore, layout: KeyLayout, holder: Holder, backoff: Backoff
) -> None:
    """Read ``<ns>/hold``, then watch it, handing every event to ``holder``; until cancelled.

    At start, with no switchover under way (the failover lock is free), PgBouncer is
    resumed once in case an earlier run of this proxy died holding it.

    Cancellation:
        Closes the watch.
    """

    async def offer(event: WatchEvent) -> None:
        holder.offer(event)

    key = layout.hold
    while True:
        try:
            found = await store.get_prefix(key)
            switchover = await store.get(layout.lock) is not None
        except EtcdError as exc:
            delay = backoff.next_delay()
            log.warning("etcd.watch.error", key=key.decode(), error=str(exc),
                        retry_in=round(delay, 3))  # fmt: skip
            await anyio.sleep(delay)
            continue
        backoff.reset()
        current = next((kv for kv in found.items if kv.key == key), None)
        holder.offer(current or Deleted(key, found.revision))
        if current is None and not switchover:
            await holder.resume_orphaned()
        await follow_keys(store, key, found.revision + 1, offer)


async def poll_primary_key(
    store: EtcdStore,
    key: bytes,
    state: DesiredState,
    metrics: ProxyMetrics,
    interval_s: float,
) -> None:
    """Re-read the key every ``interval_s`` and re-verify the applied state (safety net).

    Catches what a watch could miss and heals a PgBouncer that restarted or a file
    someone else rewrote.
    """
    while True:
        await anyio.sleep(interval_s)
        try:
            await _read_key(store, key, state, metrics, "poll")
        except EtcdError as exc:
            log.warning("etcd.poll.error", error=str(exc))
        state.request_verify()
