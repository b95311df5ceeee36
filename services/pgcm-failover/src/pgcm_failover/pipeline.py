"""The zero-downtime switchover: the original's step-with-undo pipeline, with its bugs fixed.

Shape::

    health-check all ─► lock ─► pre-flight ─► pause all ─► migrate ─► wait etcd + acks
        ─► resume all ─► wait Pacemaker settled ─► unmigrate ─► unlock

Each step's undo is registered *before* the step runs, so a half-done pause is still
resumed; undos run last-in-first-out, each shielded with its own deadline that starts
when the undo starts (the original cancelled all cleanup 10 s after *start*). Fan-out
collects every endpoint's outcome (the original kept only the last error). PgBouncers
are resumed only after etcd names the target AND every live proxy acknowledged it (the
original resumed on the etcd change, before proxies reloaded), and the move constraint
is cleared only once Pacemaker has settled (clearing earlier moves the primary back).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol, TypeVar, final

import anyio
import structlog

from pgcm_failover.errors import (
    ClientsFailed,
    ClientUnhealthy,
    FailoverAborted,
    SuperviseRefused,
    SuperviseTooOld,
    SuperviseUnauthorized,
    SuperviseUnavailable,
)

__all__ = [
    "Clock",
    "Cluster",
    "Coordinator",
    "Health",
    "MigrationTarget",
    "Phase",
    "Pipeline",
    "PipelineOptions",
    "PreflightResult",
    "Report",
    "SuperviseClient",
]

log = structlog.get_logger("pgcm_failover.pipeline")

T = TypeVar("T")


@final
@dataclass(frozen=True, slots=True)
class MigrationTarget:
    """Where the primary is moving: Pacemaker node name and the address clients will use."""

    node: str
    address: str


@final
@dataclass(frozen=True, slots=True)
class Health:
    """One endpoint's health check answer: HEALTHY or not, and the server's reasons."""

    healthy: bool
    reasons: tuple[str, ...] = ()


@final
@dataclass(frozen=True, slots=True)
class PreflightResult:
    """What pre-flight found: the current primary, the standby it expects to promote, notes.

    Attributes:
        old_primary: the node promoted now.
        target: the standby pre-flight checked (the named one, or the cluster's choice).
        reason: why that target (shown by ``--dry-run`` and in the report).
        lag_bytes: the target's replication lag when PostgreSQL facts are published.
        notes: things the operator should know that did not stop the switchover.
    """

    old_primary: str
    target: str
    reason: str
    lag_bytes: int | None = None
    notes: tuple[str, ...] = ()


class SuperviseClient(Protocol):
    """One pgcm-supervise endpoint, as the pipeline needs it."""

    @property
    def endpoint(self) -> str:
        """Return the endpoint's name for logs and the report."""
        ...

    async def health_check(self) -> Health:
        """Return whether the endpoint reports HEALTHY, and why not."""
        ...

    async def pause(self, *, pause_timeout: timedelta, expiry: timedelta) -> None:
        """PAUSE the endpoint's PgBouncer; it resumes by itself after ``expiry``."""
        ...

    async def resume(self) -> None:
        """RESUME the endpoint's PgBouncer (success when not paused)."""
        ...

    async def migrate(self, target_node: str | None) -> MigrationTarget:
        """Ask Pacemaker to move the primary; return where it is going."""
        ...

    async def unmigrate(self) -> None:
        """Clear the move constraint."""
        ...


class Coordinator(Protocol):
    """The etcd side of a switchover: the lock, the published primary and proxy acks."""

    async def acquire_lock(self) -> None:
        """Take the failover lock (the caller bounds the wait)."""
        ...

    async def release_lock(self) -> None:
        """Give the lock back."""
        ...

    async def wait_for_primary(self, address: str) -> None:
        """Return once etcd publishes ``address`` as the primary."""
        ...

    async def wait_for_proxy_acks(self, address: str) -> Sequence[str]:
        """Return the proxies once every live one acknowledged routing to ``address``."""
        ...

    @property
    def pending_proxies(self) -> Sequence[str]:
        """The live proxies that had not acknowledged when the wait last looked."""
        ...

    @property
    def confirmed_proxies(self) -> Sequence[str]:
        """The live proxies that had acknowledged when the wait last looked."""
        ...

    @property
    def gone_proxies(self) -> Sequence[str]:
        """The proxies whose acknowledgement vanished (lease expired) before they confirmed."""
        ...


class Cluster(Protocol):
    """The Pacemaker/PostgreSQL side, as observed through supervise."""

    async def preflight(
        self, target_node: str | None, *, max_transaction_age: timedelta
    ) -> PreflightResult:
        """Check that a switchover now would not hurt clients; say what it would do.

        Raises:
            FailoverAborted: with the precise reason.
        """
        ...

    async def wait_settled(self, target_node: str) -> None:
        """Return once ``target_node`` is promoted with the top score and standbys are sane."""
        ...


@final
@dataclass(frozen=True, slots=True)
class PipelineOptions:
    """Every timeout of the original, with sub-second precision, plus the new waits."""

    health_check_timeout: timedelta = timedelta(seconds=2)
    lock_timeout: timedelta = timedelta(seconds=5)
    pause_timeout: timedelta = timedelta(seconds=5)
    pause_expiry: timedelta = timedelta(seconds=25)
    resume_timeout: timedelta = timedelta(seconds=5)
    migrate_timeout: timedelta = timedelta(seconds=15)
    settle_timeout: timedelta = timedelta(seconds=60)
    cleanup_grace: timedelta = timedelta(seconds=10)
    proxy_ack_timeout: timedelta = timedelta(seconds=5)
    target_node: str | None = None
    # Allowance for the network on top of pause_timeout: the server enforces the pause
    # timeout itself and answers DEADLINE_EXCEEDED; we wait a little longer for that
    # answer rather than cut the call at the same instant.
    rpc_margin: timedelta = timedelta(seconds=1)
    # Taken off what is left of the pause expiry when waiting for etcd and the proxies:
    # supervise's auto-resume fires pause_expiry after it received PAUSE, and our RESUME
    # fan-out needs a moment too. Giving up this much earlier means clients are resumed
    # by us, with a clear "proxies did not follow" error, not silently by the expiry.
    expiry_margin: timedelta = timedelta(milliseconds=500)


@final
@dataclass(slots=True)
class Phase:
    """One timed step of the report."""

    name: str
    started: float
    finished: float | None = None
    ok: bool = False
    detail: str = ""

    @property
    def seconds(self) -> float | None:
        """Return the duration, or None when the phase never finished."""
        return None if self.finished is None else self.finished - self.started


@final
@dataclass(slots=True)
class Report:
    """What happened, for the operator and for ``--json``."""

    phases: list[Phase] = field(default_factory=list)
    target: MigrationTarget | None = None
    old_primary: str | None = None
    planned_target: str | None = None
    proxies_acknowledged: list[str] = field(default_factory=list)
    proxies_late: list[str] = field(default_factory=list)
    paused_at: float | None = None
    resumed_at: float | None = None
    needs_human: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def paused_seconds(self) -> float | None:
        """Return how long clients were held by PAUSE."""
        if self.paused_at is None or self.resumed_at is None:
            return None
        return self.resumed_at - self.paused_at


Clock = Callable[[], float]
PhaseListener = Callable[[Phase], None]

# Answers after which the server certainly did not start a move.
_DEFINITE_REFUSALS = (SuperviseRefused, SuperviseTooOld, SuperviseUnauthorized)


@final
class Pipeline:
    """Runs one switchover; create a new instance for each attempt."""

    def __init__(
        self,
        clients: Sequence[SuperviseClient],
        coordinator: Coordinator,
        cluster: Cluster,
        options: PipelineOptions,
        *,
        clock: Clock = time.monotonic,
        on_phase: PhaseListener | None = None,
    ) -> None:
        if not clients:
            raise ValueError("a switchover needs at least one supervise endpoint")
        self._clients = tuple(clients)
        self._coordinator = coordinator
        self._cluster = cluster
        self._options = options
        self._clock = clock
        self._on_phase = on_phase
        self.report = Report()
        self._paused = False
        self._migrate_requested = False
        self._move_maybe_done = False
        self._settled = False

    async def run(self) -> Report:
        """Run the switchover; undo what was done when a step fails.

        Raises:
            ClientUnhealthy: a supervise endpoint is not HEALTHY; nothing was changed.
            ClientsFailed: a fan-out step failed on some endpoints (all outcomes inside).
            FailoverAborted: pre-flight refused, or etcd/proxies/Pacemaker did not follow.
            TimeoutError: a bounded step ran out of time.

        Cancellation:
            Cancelling (Ctrl-C, SIGTERM) runs every registered undo, each shielded with
            ``cleanup_grace``, before the cancellation propagates.
        """
        try:
            return await self._run()
        except Exception as exc:
            self.report.error = str(exc) or type(exc).__name__
            if self._move_maybe_done:
                where = self.report.target.node if self.report.target else "another node"
                self.report.needs_human.append(
                    f"the switchover failed after the move was requested: the primary may "
                    f"now be on {where}; check 'pgcm-failover status' (etcd primary, proxy "
                    f"acks) before retrying"
                )
            raise

    async def _run(self) -> Report:
        opts = self._options
        await self._phase("health_check", self._health_check_clients, opts.health_check_timeout)
        async with AsyncExitStack() as undo:
            undo.push_async_callback(self._undo, "release_lock", self._coordinator.release_lock)
            await self._phase("acquire_lock", self._coordinator.acquire_lock, opts.lock_timeout)
            await self._phase("preflight", self._preflight, opts.health_check_timeout)
            # Both undos are registered before pausing, in this order, so that on failure
            # clients are resumed FIRST and the move is cleared after (LIFO). Each undo is
            # a no-op when its step never started.
            # The unmigrate undo first waits for Pacemaker to settle (up to settle_timeout),
            # so it gets that on top of the usual grace.
            undo.push_async_callback(
                self._undo,
                "unmigrate",
                self._settle_then_unmigrate,
                opts.settle_timeout + opts.cleanup_grace,
            )
            undo.push_async_callback(self._undo, "resume", self._resume_if_paused)
            await self._phase("pause", self._pause, opts.pause_timeout + opts.rpc_margin)
            self.report.target = await self._phase("migrate", self._migrate, opts.migrate_timeout)
            # Bounded by what is left of the expiry (counted from the pause, not from this
            # phase): past it PgBouncers resume on their own anyway.
            await self._phase("wait_for_proxies", self._wait_followed, self._pause_left())
            await self._phase("resume", self._resume_if_paused, opts.resume_timeout)
            # The lock is kept and the constraint stays until Pacemaker has settled;
            # clearing earlier moves the primary back (docs/lab.md).
            await self._phase("wait_settled", self._wait_settled, opts.settle_timeout)
        return self.report

    async def _phase(self, name: str, action: Callable[[], Awaitable[T]], limit: timedelta) -> T:
        phase = Phase(name, self._clock())
        self.report.phases.append(phase)
        log.info("failover.phase.start", phase=name)
        self._notify(phase)
        try:
            with anyio.fail_after(limit.total_seconds()):
                result = await action()
        except TimeoutError as exc:
            phase.detail = f"timed out after {limit.total_seconds():g}s"
            log.error("failover.phase.timeout", phase=name, limit=limit.total_seconds())
            raise TimeoutError(f"{name} {phase.detail}") from exc
        except Exception as exc:
            phase.detail = str(exc)
            log.error("failover.phase.error", phase=name, error=str(exc))
            raise
        finally:
            phase.finished = self._clock()
            if phase.detail:
                self._notify(phase)
        phase.ok = True
        self._notify(phase)
        log.info("failover.phase.done", phase=name, seconds=round(phase.seconds or 0.0, 4))
        return result

    def _notify(self, phase: Phase) -> None:
        if self._on_phase is not None:
            self._on_phase(phase)

    def _pause_left(self) -> timedelta:
        opts = self._options
        paused_at = self.report.paused_at
        elapsed = 0.0 if paused_at is None else self._clock() - paused_at
        left = opts.pause_expiry.total_seconds() - elapsed - opts.expiry_margin.total_seconds()
        return timedelta(seconds=max(0.0, left))

    async def _undo(
        self,
        name: str,
        rollback: Callable[[], Awaitable[None]],
        budget: timedelta | None = None,
    ) -> None:
        grace = (budget or self._options.cleanup_grace).total_seconds()
        with anyio.move_on_after(grace, shield=True) as scope:
            try:
                await rollback()
            except Exception as exc:  # noqa: BLE001 - an undo must not stop the other undos
                # No traceback: formatting one reads source files on the event loop.
                log.error(
                    "pipeline.undo.error",
                    step=name,
                    error=str(exc),
                    error_type=type(exc).__name__,
                    msg="manual action may be required",
                )
                self.report.needs_human.append(f"{name} failed: {exc}")
        if scope.cancelled_caught:
            log.error("pipeline.undo.timeout", step=name, grace=grace)
            self.report.needs_human.append(f"{name} did not finish within {grace:g}s")

    async def _health_check_clients(self) -> None:
        outcomes = await self._fan_out("health_check", lambda client: client.health_check())
        unhealthy = {ep: health.reasons for ep, health in outcomes.items() if not health.healthy}
        if unhealthy:
            raise ClientUnhealthy(sorted(unhealthy), unhealthy)

    async def _preflight(self) -> None:
        result = await self._cluster.preflight(
            self._options.target_node, max_transaction_age=self._options.pause_timeout
        )
        self.report.old_primary = result.old_primary
        self.report.planned_target = result.target
        self.report.notes.extend(result.notes)

    async def _pause(self) -> None:
        opts = self._options
        # Marked before the first PAUSE is sent: a PAUSE that times out half-way still
        # leaves some PgBouncers paused, and the undo must resume them.
        self._paused = True
        self.report.paused_at = self._clock()
        await self._fan_out(
            "pause",
            lambda client: client.pause(pause_timeout=opts.pause_timeout, expiry=opts.pause_expiry),
        )

    async def _resume_if_paused(self) -> None:
        if not self._paused:
            return
        await self._fan_out("resume", lambda client: client.resume())
        self._paused = False
        self.report.resumed_at = self._clock()

    async def _migrate(self) -> MigrationTarget:
        # One endpoint is enough: Pacemaker is cluster-wide. Try the next one if the first
        # cannot do it (its node may be the one going away).
        failures: dict[str, Exception] = {}
        planned = self.report.planned_target
        pinned = self._options.target_node
        # Marked before asking: a migrate that times out may still have created the
        # move constraint, and the undo must clear it.
        self._migrate_requested = True
        for client in self._clients:
            try:
                # Until an answer says otherwise, this request may have moved the primary.
                self._move_maybe_done = True
                target = await client.migrate(pinned)
            except _DEFINITE_REFUSALS as exc:
                # Nothing was moved: the next endpoint may try with the same target.
                log.warning("failover.migrate.error", endpoint=client.endpoint, error=str(exc))
                failures[client.endpoint] = exc
                self._move_maybe_done = any(
                    not isinstance(e, _DEFINITE_REFUSALS) for e in failures.values()
                )
            except Exception as exc:  # noqa: BLE001 - collected and re-raised below
                log.warning("failover.migrate.error", endpoint=client.endpoint, error=str(exc))
                failures[client.endpoint] = exc
                # Timeout or UNAVAILABLE: the move may have been issued. Another try
                # without a target could let Pacemaker pick a second, different node;
                # only the planned target is safe to ask for again.
                if planned is None:
                    break
                pinned = planned
            else:
                if planned is not None and target.node != planned:
                    self.report.notes.append(
                        f"Pacemaker chose {target.node}, not {planned} as pre-flight expected"
                    )
                return target
        raise ClientsFailed("migrate", failures)

    async def _settle_then_unmigrate(self) -> None:
        if not self._migrate_requested:
            return
        if not self._settled:
            target = self.report.target
            if target is None:
                if self._move_maybe_done:
                    self._leave_constraint(
                        "the migrate answer was lost, so the target is unknown and "
                        "Pacemaker's settling cannot be checked"
                    )
                # Otherwise every endpoint refused outright: no constraint was created.
                return
            # A failed switchover after the move: still wait (bounded) for Pacemaker to
            # settle, or clearing the constraint would bounce the primary again.
            limit = self._options.settle_timeout.total_seconds()
            try:
                with anyio.move_on_after(limit) as scope:
                    await self._cluster.wait_settled(target.node)
            except Exception as exc:  # noqa: BLE001 - reported; the constraint is kept
                self._leave_constraint(f"could not check that Pacemaker settled: {exc}")
                return
            if scope.cancelled_caught:
                self._leave_constraint(f"Pacemaker did not settle on {target.node} in {limit:g}s")
                return
            self._settled = True
        await self._unmigrate()

    def _leave_constraint(self, why: str) -> None:
        log.error("pipeline.unmigrate.skipped", reason=why)
        self.report.needs_human.append(
            f"the move constraint was left in place ({why}); clearing it before Pacemaker "
            f"has settled moves the primary back. Run 'pgcm-failover cleanup' once "
            f"'pgcm-failover status' shows the new primary settled"
        )

    async def _unmigrate(self) -> None:
        failures: dict[str, Exception] = {}
        for client in self._clients:
            try:
                await client.unmigrate()
            except Exception as exc:  # noqa: BLE001 - collected and re-raised below
                failures[client.endpoint] = exc
            else:
                return
        raise ClientsFailed("unmigrate", failures)

    async def _wait_followed(self) -> None:
        target = self._require_target()
        await self._coordinator.wait_for_primary(target.address)
        bound = self._options.proxy_ack_timeout.total_seconds()
        with anyio.move_on_after(bound) as waited:
            acked = await self._coordinator.wait_for_proxy_acks(target.address)
        if waited.cancelled_caught:
            # Every client waits while we do: a frozen app node must not hold them all.
            late = list(self._coordinator.pending_proxies)
            acked = list(self._coordinator.confirmed_proxies)
            self.report.proxies_late = late
            self.report.notes.append(
                f"resumed without the acknowledgement of {len(late)} pgcm-proxy after "
                f"{bound:g}s (proxy_ack_timeout): {', '.join(late)}; their PgBouncers route "
                "to the old primary until they apply the new one"
            )
            log.warning("failover.proxy.late", proxies=late, waited_s=bound,
                        msg="resuming without these proxies' acknowledgement")  # fmt: skip
        self.report.proxies_acknowledged = list(acked)
        if gone := [p for p in self._coordinator.gone_proxies if p not in self.report.proxies_late]:
            # Frozen long enough for its lease to expire: no longer waited for, but just
            # as late as one still silent at proxy_ack_timeout.
            self.report.proxies_late.extend(gone)
            self.report.notes.append(
                f"{len(gone)} pgcm-proxy stopped renewing its acknowledgement during the "
                f"switchover and was not waited for: {', '.join(gone)}"
            )
        if not acked:
            self.report.notes.append(
                "no pgcm-proxy is registered in etcd: resumed as soon as etcd named the new primary"
            )

    async def _wait_settled(self) -> None:
        await self._cluster.wait_settled(self._require_target().node)
        self._settled = True

    def _require_target(self) -> MigrationTarget:
        if self.report.target is None:
            raise FailoverAborted("no migration target recorded")
        return self.report.target

    async def _fan_out(
        self, operation: str, call: Callable[[SuperviseClient], Awaitable[T]]
    ) -> Mapping[str, T]:
        """Call every endpoint concurrently; all must finish; collect every outcome."""
        results: dict[str, T] = {}
        failures: dict[str, Exception] = {}

        async def one(client: SuperviseClient) -> None:
            try:
                results[client.endpoint] = await call(client)
            except Exception as exc:  # noqa: BLE001 - aggregated into ClientsFailed
                failures[client.endpoint] = exc
                log.error(
                    "clients.error", operation=operation, endpoint=client.endpoint, error=str(exc)
                )

        async with anyio.create_task_group() as tg:
            for client in self._clients:
                tg.start_soon(one, client)
        for client in self._clients:
            # A child ended by a cancellation nobody asked for (a transport library
            # cancelling its own task) leaves no outcome: never count that as success.
            if client.endpoint not in results and client.endpoint not in failures:
                failures[client.endpoint] = SuperviseUnavailable(
                    client.endpoint, operation, None, "call ended without an answer"
                )
        if failures:
            raise ClientsFailed(operation, failures)
        return results
