"""The failover gRPC servicer: health check, pause/resume of PgBouncer, migrate/unmigrate.

Wire-compatible with the original's ``failover.proto`` (see protos/failover.proto). The
one table mapping domain errors to gRPC statuses is :data:`STATUS_TABLE`.

Every timer has an owner: :class:`FailoverServer` is an async context manager whose task
group owns every pause-expiry timer; each timer keeps its own ``CancelScope`` so a resume
or a newer pause cancels exactly it, and a timer that fires resumes only if no newer
pause started (:meth:`PauseController.resume` with ``only_generation``). On exit the
server resumes a PgBouncer it still holds paused (shielded, own deadline, C5).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol, Self, final

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus
from grpclib import GRPCError
from grpclib.const import Handler, Status
from grpclib.metadata import Deadline
from grpclib.server import Stream
from typing_extensions import override

from pgcm_common.backoff import Backoff
from pgcm_common.errors import EtcdError, PacemakerError, PgBouncerError, PgcmError
from pgcm_common.pacemaker import (
    ClusterState,
    CrmMonReader,
    Node,
    NodeAddressResolver,
    NodeAddressUnknown,
    PacemakerCommandFailed,
)
from pgcm_common.pausing import PauseController
from pgcm_common.pgbouncer import PgBouncerAdminProtocol
from pgcm_common.proto.failover import (
    Empty,
    FailoverBase,
    HealthCheckResponse,
    HealthCheckResponseStatus,
    MaintenanceRequest,
    MaintenanceResponse,
    MigrateRequest,
    MigrateResponse,
    PauseRequest,
    PauseResponse,
    ResumeResponse,
    UnmigrateResponse,
)
from pgcm_common.untrusted import excerpt
from pgcm_supervise.errors import (
    ClusterWithoutQuorum,
    InvalidRequest,
    NoMigrationTarget,
    PauseSuperseded,
    UnknownMigrationTarget,
)
from pgcm_supervise.limits import MAX_STATUS_MESSAGE_CHARS, check_request
from pgcm_supervise.maintenance import MAX_REASON_LENGTH, MaintenanceControl
from pgcm_supervise.pacemaker_control import PacemakerControl, choose_target

__all__ = [
    "STATUS_TABLE",
    "Clock",
    "EtcdProbe",
    "FailoverServer",
    "FailoverServerOptions",
    "SystemClock",
    "grpc_error",
]

_log = structlog.get_logger("pgcm_supervise.server")

EtcdProbe = Callable[[], Awaitable[object]]
"""Ask etcd something cheap; raise (any ``Exception``) when it does not answer."""

_HEALTH_CHECK_PATH = "/failover.Failover/health_check"
# Part of the caller's deadline kept for sending the answer back: the probes stop this
# much earlier, so an UNHEALTHY answer with reasons arrives instead of a timeout. On a
# busy host both event loops may take a few hundred milliseconds to send and read the
# answer; with 0.2 s the caller's own limit sometimes fired first and the operator saw
# "timed out" instead of the reason (etcd without quorum, say).
_REPLY_MARGIN_S = 0.5
_REPLY_MARGIN_SHARE = 0.25  # of the remaining time, for very short deadlines

# Checked in order, first match wins: subclasses before their bases. UNIMPLEMENTED is
# never answered for an rpc of the proto (every one is implemented).
STATUS_TABLE: tuple[tuple[type[BaseException], Status], ...] = (
    (InvalidRequest, Status.INVALID_ARGUMENT),
    (UnknownMigrationTarget, Status.INVALID_ARGUMENT),
    (ClusterWithoutQuorum, Status.FAILED_PRECONDITION),
    (NoMigrationTarget, Status.FAILED_PRECONDITION),
    # The target is fine but we cannot tell the caller where it is: a config problem.
    (NodeAddressUnknown, Status.FAILED_PRECONDITION),
    (PauseSuperseded, Status.ABORTED),
    (TimeoutError, Status.DEADLINE_EXCEEDED),
    (PgBouncerError, Status.UNAVAILABLE),
    (PacemakerError, Status.UNAVAILABLE),
    (EtcdError, Status.UNAVAILABLE),
    (PgcmError, Status.INTERNAL),
)


def grpc_error(exc: BaseException, *, timeout_message: str = "exceeded timeout") -> GRPCError:
    """Return the GRPCError a handler raises for ``exc`` (see :data:`STATUS_TABLE`)."""
    status = next((s for kind, s in STATUS_TABLE if isinstance(exc, kind)), Status.INTERNAL)
    message = timeout_message if isinstance(exc, TimeoutError) else str(exc)
    # Trailers are HPACK-encoded in pure Python, in time quadratic in their length: no
    # message, whatever it quotes, may be long.
    if len(message) > MAX_STATUS_MESSAGE_CHARS:
        message = message[: MAX_STATUS_MESSAGE_CHARS - 3] + "..."
    return GRPCError(status, message)


class Clock(Protocol):
    """Wall-clock time for response timestamps."""

    def now(self) -> datetime:
        """Return the current time, timezone-aware."""
        ...


@final
class SystemClock:
    """The real :class:`Clock`."""

    def now(self) -> datetime:
        """Return the current UTC time."""
        return datetime.now(UTC)


@final
@dataclass(frozen=True, slots=True)
class FailoverServerOptions:
    """Tunables of :class:`FailoverServer`.

    Attributes:
        clone_id: the promotable clone ``crm_resource`` moves; None means the clone that
            crm_mon reports for the configured resource.
        health_timeout: bound of each health probe (PgBouncer, crm_mon, etcd); a caller's
            shorter gRPC deadline shortens it (see :meth:`FailoverServer.health_check`).
        pacemaker_timeout: bound of a whole migrate/unmigrate (crm_mon + crm_resource).
        cleanup_timeout: bound of the shielded RESUME after a failed pause and on exit.
        resume_retry_max: longest wait between two tries of a RESUME that failed.
        reconcile_interval: wait between two tries of the startup reconcile while a
            failover lock is held or etcd does not answer.
        max_pause_expiry: the longest pause expiry (and PAUSE timeout) a caller may
            ask for; longer requests are refused with INVALID_ARGUMENT.
        on_pause_state: called with True/False whenever our pause starts or ends
            holding (wire it to the ``pgcm_supervise_pgbouncer_paused`` gauge).
        maintenance: sets Pacemaker's maintenance mode for ``set_maintenance``; None
            answers that rpc FAILED_PRECONDITION.
        migrate_read_ahead: a PAUSE starts a crm_mon read in the background, and the
            migrate that follows uses it when it started at most this long before the
            migrate arrived (zero: migrate always reads anew). A switchover's clients
            are held from the PAUSE on, and the read then overlaps the PAUSE's wait for
            running transactions instead of coming after it.
    """

    clone_id: str | None = None
    health_timeout: timedelta = timedelta(seconds=2)
    pacemaker_timeout: timedelta = timedelta(seconds=15)
    cleanup_timeout: timedelta = timedelta(seconds=5)
    resume_retry_max: timedelta = timedelta(seconds=5)
    reconcile_interval: timedelta = timedelta(seconds=5)
    max_pause_expiry: timedelta = timedelta(minutes=5)
    on_pause_state: Callable[[bool], None] | None = field(default=None, compare=False)
    maintenance: MaintenanceControl | None = field(default=None, compare=False)
    migrate_read_ahead: timedelta = timedelta(0)


@final
class _ReadAhead:
    """A crm_mon read a PAUSE started, for the migrate that usually follows it."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.done = anyio.Event()
        self.state: ClusterState | None = None


def _pause_durations(request: PauseRequest, ceiling: timedelta) -> tuple[float, float]:
    for name, value in (
        ("timeout", request.timeout),
        ("expiry", request.expiry),
        ("timeout_ms", request.timeout_ms),
        ("expiry_ms", request.expiry_ms),
    ):
        if value < 0:
            raise InvalidRequest(name, f"must not be negative (got {value})")
    timeout = request.timeout_ms / 1000 if request.timeout_ms else float(request.timeout)
    expiry = request.expiry_ms / 1000 if request.expiry_ms else float(request.expiry)
    if timeout <= 0:
        raise InvalidRequest("timeout", "must be positive")
    if expiry <= 0:
        # A pause without expiry would hold every client forever if the caller died.
        raise InvalidRequest("expiry", "must be positive")
    limit = ceiling.total_seconds()
    for name, seconds in (("timeout", timeout), ("expiry", expiry)):
        if seconds > limit:
            # Every client of the node waits while paused: a pause that outlives any
            # switchover is a mistake (or an attack), not something to honour.
            raise InvalidRequest(name, f"must be at most {limit:g}s (max_pause_expiry)")
    return timeout, expiry


@final
class FailoverServer(FailoverBase, anyio.AsyncContextManagerMixin):
    """Serves ``failover.Failover`` for the PgBouncers and Pacemaker of this node.

    Use as ``async with FailoverServer(...) as api:`` and hand ``api`` to ``serve_grpc``;
    handlers only work while the context is entered (the timers need its task group).
    """

    def __init__(
        self,
        pgbouncers: Sequence[PgBouncerAdminProtocol],
        crm: CrmMonReader,
        control: PacemakerControl,
        *,
        addresses: NodeAddressResolver,
        etcd_probe: EtcdProbe,
        clock: Clock,
        options: FailoverServerOptions | None = None,
    ) -> None:
        """Serve with these collaborators (all Protocol-typed seams)."""
        self._options = options or FailoverServerOptions()
        self._pgbouncers = tuple(pgbouncers)
        self._pauser = PauseController(
            self._pgbouncers,
            cleanup_timeout=self._options.cleanup_timeout,
            on_state=self._options.on_pause_state,
        )
        self._crm = crm
        self._control = control
        self._addresses = addresses
        self._etcd_probe = etcd_probe
        self._clock = clock
        self._tg: TaskGroup | None = None
        self._expiry: anyio.CancelScope | None = None
        self._expiry_deadline: float | None = None
        self._closing = False
        self._read_ahead: _ReadAhead | None = None

    @property
    def pauser(self) -> PauseController:
        """Return the pause controller (its ``paused`` state is published elsewhere)."""
        return self._pauser

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[Self]:
        """Own the timers' task group; on exit resume a PgBouncer we still hold paused.

        Cancellation:
            The exit path resumes shielded, bounded by ``cleanup_timeout``.
        """
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield self
            finally:
                self._tg = None
                self._cancel_expiry()
                tg.cancel_scope.cancel()
                await self._resume_on_exit()

    async def _resume_on_exit(self) -> None:
        if not self._pauser.paused:
            return
        with anyio.move_on_after(self._options.cleanup_timeout.total_seconds(), shield=True):
            try:
                await self._pauser.resume(reason="shutdown")
            except PgcmError as exc:
                _log.error("shutdown.resume.error", error=str(exc), msg="PgBouncer may be paused")
                return
            _log.info("shutdown.resume", msg="resumed PgBouncer before exiting")
            return
        _log.error("shutdown.resume.timeout", msg="PgBouncer may still be paused")

    async def reconcile_on_startup(
        self, lock_is_held: Callable[[], Awaitable[bool]], *, only_generation: int | None = None
    ) -> bool:
        """Resume PgBouncer left paused by a crashed supervise, unless a failover runs.

        PgBouncer 1.18 cannot report a global PAUSE, so RESUME is sent unconditionally
        when no failover lock is held ("not paused" counts as success).

        Args:
            lock_is_held: reads the failover lock.
            only_generation: skip the RESUME when a pause started since the pause
                controller's generation had this value.

        Returns:
            True when RESUME was sent and succeeded (or a newer pause made it moot).

        Raises:
            PgBouncersFailed: RESUME failed on some PgBouncer.
            EtcdError: the lock could not be read (from ``lock_is_held``).
        """
        if await lock_is_held():
            _log.info(
                "pause.reconcile",
                outcome="skipped",
                msg="a failover lock is held; leaving PgBouncer as it is",
            )
            return False
        if not await self._pauser.resume(
            reason="startup_reconcile", only_generation=only_generation
        ):
            return True
        _log.info(
            "pause.reconcile",
            outcome="resumed",
            msg="no failover lock held; resumed PgBouncer in case a crash left it paused",
        )
        return True

    async def serve_reconcile(
        self,
        lock_is_held: Callable[[], Awaitable[bool]],
        *,
        task_status: TaskStatus[bool] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Repair a pause orphaned by a crashed supervise, retrying until it is done.

        Each try is :meth:`reconcile_on_startup`, bounded by ``cleanup_timeout``; while a
        failover lock is held or etcd or PgBouncer fail, it retries every
        ``reconcile_interval``. It stops, sending nothing, once this process has paused
        on request itself (that pause owns PgBouncer now). Readiness:
        ``task_status.started(done)`` after the first try.

        Cancellation:
            Stops between or inside tries; a RESUME half-sent is harmless.
        """
        generation = self._pauser.generation
        started = False
        while True:
            done = await self._reconcile_once(lock_is_held, generation)
            if not started:
                started = True
                task_status.started(done)
            if done:
                return
            await anyio.sleep(self._options.reconcile_interval.total_seconds())

    async def _reconcile_once(
        self, lock_is_held: Callable[[], Awaitable[bool]], generation: int
    ) -> bool:
        if self._pauser.generation != generation:
            _log.info(
                "pause.reconcile",
                outcome="superseded",
                msg="paused on request since startup; leaving PgBouncer to that pause",
            )
            return True
        try:
            with anyio.fail_after(self._options.cleanup_timeout.total_seconds()):
                return await self.reconcile_on_startup(lock_is_held, only_generation=generation)
        except (PgcmError, TimeoutError) as exc:
            _log.warning("pause.reconcile.error", error=str(exc), msg="retrying")
            return False

    async def resume_for_shutdown(self) -> None:
        """Refuse new pauses and resume a PgBouncer we hold paused, first thing on exit.

        Called before the gRPC server drains and the status lease is revoked:
        clients must not wait on a paused PgBouncer while the rest shuts down.

        Cancellation:
            Shielded, bounded by ``cleanup_timeout``.
        """
        self._closing = True
        self._cancel_expiry()
        await self._resume_on_exit()

    # -- timers -------------------------------------------------------------------------

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
            self._expiry_deadline = None

    def _arm_expiry(self, seconds: float, *, reason: str = "expired") -> None:
        """Replace the pending timer: resume after ``seconds``, retrying until it works."""
        if self._tg is None:
            raise PgcmError("FailoverServer used outside its async context")
        self._cancel_expiry()
        scope = anyio.CancelScope()
        self._expiry = scope
        self._expiry_deadline = time.monotonic() + seconds
        self._tg.start_soon(self._expire, scope, seconds, self._pauser.generation, reason)

    def _keep_protection(self) -> None:
        """After a failed pause or resume: make sure a paused PgBouncer gets resumed.

        The earlier pause's deadline is kept (re-armed under the current generation,
        which the failed pause bumped); without one the resume is retried at once.
        """
        if not self._pauser.paused:
            self._cancel_expiry()
            return
        deadline = self._expiry_deadline
        remaining = 0.0 if deadline is None else max(deadline - time.monotonic(), 0.0)
        self._arm_expiry(remaining, reason="expired" if deadline is not None else "retry")

    async def _expire(
        self, scope: anyio.CancelScope, seconds: float, generation: int, reason: str
    ) -> None:
        with scope:
            await anyio.sleep(seconds)
            backoff = Backoff(maximum=self._options.resume_retry_max)
            while True:
                try:
                    resumed = await self._pauser.resume(reason=reason, only_generation=generation)
                except PgcmError as exc:
                    # Keep trying: a PgBouncer left paused holds every client of the node.
                    _log.error(
                        "pause.expiry.error",
                        error=str(exc),
                        attempt=backoff.attempt,
                        msg="PgBouncer may be paused; retrying RESUME",
                    )
                    await anyio.sleep(backoff.next_delay())
                    continue
                break
            if self._expiry is scope:
                self._expiry = None
                self._expiry_deadline = None
            if resumed:
                _log.info("pause.expiry", reason=reason, msg="pause expired; PgBouncer resumed")

    # -- rpcs ---------------------------------------------------------------------------

    @override
    def __mapping__(self) -> dict[str, Handler]:
        """Serve health_check through :meth:`_rpc_health_check`, which sees the deadline."""
        mapping = super().__mapping__()
        mapping[_HEALTH_CHECK_PATH] = mapping[_HEALTH_CHECK_PATH]._replace(
            func=self._rpc_health_check
        )
        return mapping

    async def _rpc_health_check(self, stream: Stream[Empty, HealthCheckResponse]) -> None:
        request = await stream.recv_message()
        if request is None:  # pragma: no cover - grpclib always delivers a unary request
            raise GRPCError(Status.INVALID_ARGUMENT, "no request message")
        await stream.send_message(await self.check_health(stream.deadline))

    @override
    async def health_check(self, message: Empty) -> HealthCheckResponse:
        """Answer HEALTHY only when PgBouncer, Pacemaker (with quorum) and etcd answer."""
        return await self.check_health(None)

    async def check_health(self, deadline: Deadline | None) -> HealthCheckResponse:
        """Probe PgBouncer, Pacemaker (with quorum) and etcd in parallel; report.

        Every probe is bounded by ``health_timeout`` and, when the caller sent a gRPC
        deadline, by that deadline less a margin to send the answer: a probe that has
        not answered by then (a frozen etcd member that the store has not yet moved
        away from, a hung crm_mon) makes the answer UNHEALTHY with its reason, rather
        than letting the whole call miss the caller's deadline.
        """
        limit = self._options.health_timeout.total_seconds()
        if deadline is not None:
            remaining = deadline.time_remaining()
            margin = min(_REPLY_MARGIN_S, remaining * _REPLY_MARGIN_SHARE)
            limit = max(min(limit, remaining - margin), 0.0)
        reasons = await self._health_reasons(limit)
        if reasons:
            _log.warning("health_check.unhealthy", reasons=reasons)
            return HealthCheckResponse(status=HealthCheckResponseStatus.UNHEALTHY, reasons=reasons)
        return HealthCheckResponse(status=HealthCheckResponseStatus.HEALTHY)

    async def _health_reasons(self, limit: float) -> list[str]:
        reasons: list[str] = []

        async def probe(name: str, check: Callable[[], Awaitable[str | None]]) -> None:
            outcome: list[str | None] = []

            async def run() -> None:
                try:
                    outcome.append(await check())
                except Exception as exc:  # noqa: BLE001 - any failure makes the check fail
                    outcome.append(str(exc) or type(exc).__name__)

            # The check runs in a child task: a gRPC call (etcd) cancelled by the time
            # limit ends with a cancellation anyio does not recognise as its own, which
            # would otherwise escape the limit's scope and cancel the sibling probes.
            with anyio.move_on_after(limit):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(run)
            problem = outcome[0] if outcome else f"no answer within {limit:g}s"
            if problem is not None:
                reasons.append(f"{name}: {problem}")

        async def pgbouncer(admin: PgBouncerAdminProtocol) -> str | None:
            await admin.show_version()
            return None

        async def pacemaker() -> str | None:
            state = await self._crm.read_cluster_state()
            # A blocked instance or pending fencing makes this node unfit for a
            # switchover even with quorum: Pacemaker will not (or not yet) act on a move.
            problems = ([] if state.with_quorum else ["no quorum"]) + list(state.needs_attention())
            return "; ".join(problems) or None

        async def etcd() -> str | None:
            await self._etcd_probe()
            return None

        async with anyio.create_task_group() as tg:
            for admin in self._pgbouncers:
                tg.start_soon(probe, f"pgbouncer {admin.endpoint}", lambda a=admin: pgbouncer(a))
            tg.start_soon(probe, "pacemaker", pacemaker)
            tg.start_soon(probe, "etcd", etcd)
        return sorted(reasons)

    @override
    async def pause(self, message: PauseRequest) -> PauseResponse:
        """PAUSE within ``timeout``; resume automatically after ``expiry``.

        Raises:
            GRPCError: DEADLINE_EXCEEDED when PAUSE did not complete in time (PgBouncer
                was resumed), INVALID_ARGUMENT, UNAVAILABLE or ABORTED (see the table).
        """
        try:
            timeout, expiry = _pause_durations(message, self._options.max_pause_expiry)
        except InvalidRequest as exc:
            raise grpc_error(exc) from exc
        if self._closing:
            raise GRPCError(Status.UNAVAILABLE, "supervise is shutting down")
        _log.info("clients.pgbouncer.pause.request", timeout=timeout, expiry=expiry)
        started = time.monotonic()
        self._start_read_ahead(started)
        try:
            with anyio.fail_after(timeout):
                await self._pauser.pause()
        except (PgcmError, TimeoutError) as exc:
            # The earlier pause's timer stays the safety net until this one succeeds.
            self._keep_protection()
            _log.warning(
                "clients.pgbouncer.pause.failed",
                error=str(exc) or type(exc).__name__,
                elapsed=time.monotonic() - started,
            )
            raise grpc_error(exc, timeout_message="exceeded pause timeout") from exc
        created = self._clock.now()
        # Only now does this pause own the expiry (the original lifted it early).
        self._arm_expiry(expiry)
        return PauseResponse(created_at=created, expires_at=created + timedelta(seconds=expiry))

    @override
    async def resume(self, message: Empty) -> ResumeResponse:
        """RESUME (idempotent) and cancel the pending expiry timer.

        Raises:
            GRPCError: UNAVAILABLE when some PgBouncer could not be resumed.
        """
        self._cancel_expiry()
        try:
            await self._pauser.resume(reason="requested")
        except PgcmError as exc:
            self._keep_protection()
            raise grpc_error(exc) from exc
        return ResumeResponse(created_at=self._clock.now())

    @override
    async def migrate(self, message: Empty) -> MigrateResponse:
        """Move the primary to the standby the cluster would promote."""
        return await self._migrate("")

    @override
    async def migrate_to(self, message: MigrateRequest) -> MigrateResponse:
        """Move the primary to ``message.target`` (empty: as :meth:`migrate`).

        Raises:
            GRPCError: INVALID_ARGUMENT for a target longer than a Pacemaker node name
                can be or holding non-printable characters (``limits.py``).
        """
        try:
            check_request(message)
        except InvalidRequest as exc:
            raise grpc_error(exc) from exc
        return await self._migrate(message.target)

    def _start_read_ahead(self, now: float) -> None:
        if self._options.migrate_read_ahead <= timedelta(0) or self._tg is None:
            return
        ahead = self._read_ahead = _ReadAhead(now)
        self._tg.start_soon(self._read_into, ahead)

    async def _read_into(self, ahead: _ReadAhead) -> None:
        try:
            ahead.state = await self._crm.read_cluster_state()
        except Exception as exc:  # noqa: BLE001 - the migrate then reads anew
            _log.debug("pacemaker.read_ahead.failed", error=str(exc))
        finally:
            ahead.done.set()

    async def _state_for_migrate(self) -> ClusterState:
        """The cluster state a migrate decides on: the PAUSE's read when fresh, else a new one.

        A read-ahead is used once: a retried migrate reads anew.
        """
        ahead, self._read_ahead = self._read_ahead, None
        limit = self._options.migrate_read_ahead.total_seconds()
        if ahead is not None and time.monotonic() - ahead.started <= limit:
            await ahead.done.wait()
            if ahead.state is not None:
                _log.debug("pacemaker.read_ahead.used", age=time.monotonic() - ahead.started)
                return ahead.state
        return await self._crm.read_cluster_state()

    async def _migrate(self, requested: str) -> MigrateResponse:
        try:
            with anyio.fail_after(self._options.pacemaker_timeout.total_seconds()):
                state = await self._state_for_migrate()
                already = state.node(requested) if requested else None
                if already is not None and state.primary_node == requested:
                    # Already in the requested state is success: a caller
                    # retrying after a lost answer must not see an error.
                    return await self._already_primary(already, requested)
                target = choose_target(state, requested)
                # Resolve first: a move we could not report is worse than no move.
                address = await self._addresses.address_of(target)
                resource = self._clone_id(state)
                try:
                    await self._move(state, resource, target.name)
                except PacemakerCommandFailed:
                    # crm_resource refuses ("Requested item already exists", exit 108)
                    # when the target became the primary since our read: success, but
                    # only when a fresh read confirms it.
                    if (await self._crm.read_cluster_state()).primary_node != target.name:
                        raise
                    return await self._already_primary(target, requested)
        except (PgcmError, TimeoutError) as exc:
            _log.warning("pacemaker.migrate.failed", requested=excerpt(requested), error=str(exc))
            raise grpc_error(exc, timeout_message="exceeded pacemaker timeout") from exc
        _log.info(
            "pacemaker.migrate",
            resource=resource,
            target=target.name,
            address=address,
            requested=excerpt(requested) if requested else None,
        )
        return MigrateResponse(
            migrating_to=target.name, address=address, created_at=self._clock.now()
        )

    async def _move(self, state: ClusterState, resource: str, node: str) -> None:
        """Prefer ``node`` (checked by ``choose_target``) for the promoted role.

        The constraint is written directly unless a ban keeps the resource off ``node``:
        only ``crm_resource --move`` drops that ban. A refused direct write changed
        nothing, and ``crm_resource`` is asked instead.
        """
        banned = any(
            ban.node == node and ban.resource in {resource, state.clone_id, state.resource_id}
            for ban in state.bans
        )
        if not banned:
            try:
                await self._control.prefer_promoted(resource, node)
            except PacemakerCommandFailed as exc:
                _log.warning(
                    "pacemaker.resource.prefer_failed",
                    resource=resource,
                    node=node,
                    error=str(exc),
                    msg="asking crm_resource --move instead",
                )
            else:
                return
        await self._control.move_promoted(resource, node)

    async def _already_primary(self, node: Node, requested: str) -> MigrateResponse:
        address = await self._addresses.address_of(node)
        _log.info(
            "pacemaker.migrate",
            target=node.name,
            address=address,
            requested=excerpt(requested) if requested else None,
            outcome="already_primary",
            msg="the target already holds the primary role; nothing to move",
        )
        return MigrateResponse(
            migrating_to=node.name, address=address, created_at=self._clock.now()
        )

    def _clone_id(self, state: ClusterState | None) -> str:
        if self._options.clone_id is not None:
            return self._options.clone_id
        if state is None:  # pragma: no cover - callers read the state first
            raise PgcmError("no clone id configured and no cluster state")
        return state.clone_id

    @override
    async def unmigrate(self, message: Empty) -> UnmigrateResponse:
        """Clear the move constraint (no constraint left is success)."""
        try:
            with anyio.fail_after(self._options.pacemaker_timeout.total_seconds()):
                state = None if self._options.clone_id else await self._crm.read_cluster_state()
                resource = self._clone_id(state)
                await self._control.clear(resource)
        except (PgcmError, TimeoutError) as exc:
            _log.warning("pacemaker.unmigrate.failed", error=str(exc))
            raise grpc_error(exc, timeout_message="exceeded pacemaker timeout") from exc
        _log.info("pacemaker.unmigrate", resource=resource)
        return UnmigrateResponse(created_at=self._clock.now())

    @override
    async def set_maintenance(self, message: MaintenanceRequest) -> MaintenanceResponse:
        """Turn Pacemaker's maintenance mode on or off (already so is success).

        Refused (INVALID_ARGUMENT) when ``reason`` or ``requested_by`` is longer than
        :data:`MAX_REASON_LENGTH` characters; FAILED_PRECONDITION when this server was
        built without a :class:`MaintenanceControl`.
        """
        try:
            for name, value in (("reason", message.reason), ("requested_by", message.requested_by)):
                if len(value) > MAX_REASON_LENGTH:
                    raise InvalidRequest(name, f"longer than {MAX_REASON_LENGTH} characters")
            control = self._options.maintenance
            if control is None:
                raise GRPCError(Status.FAILED_PRECONDITION, "maintenance control not configured")
            with anyio.fail_after(self._options.pacemaker_timeout.total_seconds()):
                await control.set_maintenance(enabled=message.enabled)
        except (PgcmError, TimeoutError) as exc:
            _log.warning("pacemaker.maintenance.failed", enabled=message.enabled, error=str(exc))
            raise grpc_error(exc, timeout_message="exceeded pacemaker timeout") from exc
        # !r: both strings come from the caller; repr keeps control characters out of logs.
        _log.info(
            "pacemaker.maintenance",
            enabled=message.enabled,
            reason=repr(message.reason),
            requested_by=repr(message.requested_by),
        )
        return MaintenanceResponse(enabled=message.enabled, created_at=self._clock.now())
