"""PAUSE and RESUME a set of PgBouncers as one unit, never overlapping.

pgcm-supervise pauses its node's PgBouncers for a switchover; pgcm-proxy pauses its
PgBouncers to hold new transactions while the primary is lost (``<ns>/hold``).

PgBouncer 1.18 cannot tell us whether it is globally paused, so this module keeps the
state it caused itself. One :class:`anyio.Lock` serialises our PAUSE and RESUME fan-outs:
a RESUME sent while our own PAUSE is still waiting on a PgBouncer would be undone by
that PAUSE completing a moment later (the original's race). A resume that arrives while
a pause is still waiting cancels the pause first (the pause undoes itself), then runs.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from types import MappingProxyType
from typing import final

import anyio
import structlog

from pgcm_common.errors import PgBouncerError, PgcmError
from pgcm_common.pgbouncer import PgBouncerAdminProtocol

__all__ = ["PauseController", "PauseSuperseded", "PgBouncersFailed"]

_log = structlog.get_logger("pgcm.pausing")


@final
class PgBouncersFailed(PgBouncerError):
    """An operation failed on at least one PgBouncer; every failure is kept."""

    def __init__(self, operation: str, failures: Mapping[str, Exception]) -> None:
        self.operation = operation
        self.failures = MappingProxyType(dict(failures))
        details = "; ".join(f"{endpoint}: {exc}" for endpoint, exc in sorted(failures.items()))
        super().__init__(f"{operation} failed on {len(failures)} PgBouncer(s): {details}")


@final
class PauseSuperseded(PgcmError):
    """A resume arrived while this pause was still waiting; the pause was undone."""

    def __init__(self) -> None:
        super().__init__("pause cancelled by a resume before it completed")


@final
class PauseController:
    """Pauses and resumes a fixed set of PgBouncer admin consoles together."""

    def __init__(
        self,
        admins: Sequence[PgBouncerAdminProtocol],
        *,
        cleanup_timeout: timedelta = timedelta(seconds=5),
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        """Control ``admins`` (one per ``so_reuseport`` sibling or pooler).

        Args:
            admins: the local PgBouncer admin consoles; at least one.
            cleanup_timeout: bound of the shielded RESUME after a failed pause.
            on_state: called with the new state after every change, e.g. to set a
                "paused" gauge.
        """
        if not admins:
            raise ValueError("PauseController needs at least one PgBouncer")
        self._admins = tuple(admins)
        self._cleanup = cleanup_timeout.total_seconds()
        self._lock = anyio.Lock()
        self._pending: anyio.CancelScope | None = None
        self._paused = False
        self._generation = 0
        self._on_state = on_state

    @property
    def paused(self) -> bool:
        """Return whether our own pause currently holds."""
        return self._paused

    @property
    def generation(self) -> int:
        """Return a number that changes whenever a pause starts (see :meth:`resume`)."""
        return self._generation

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Return the endpoints, for logs and reasons."""
        return tuple(str(admin.endpoint) for admin in self._admins)

    def _set_paused(self, *, paused: bool) -> None:
        self._paused = paused
        if self._on_state is not None:
            self._on_state(paused)

    async def pause(self) -> None:
        """PAUSE every PgBouncer; on any failure resume all of them and raise.

        The caller bounds the call with ``anyio.fail_after`` (the caller owns the timeout).

        Raises:
            PgBouncersFailed: some PgBouncer refused or could not be reached.
            PauseSuperseded: a :meth:`resume` cancelled this pause while it waited.
            TimeoutError: from the caller's ``fail_after``.

        Cancellation:
            Safe: every PgBouncer is resumed (shielded, bounded by ``cleanup_timeout``)
            before the cancellation propagates.
        """
        with anyio.CancelScope() as scope:
            self._pending = scope
            try:
                async with self._lock:
                    # Bumped under the lock: an expiry timer already queued on the lock
                    # for the previous pause still sees its own generation and fires.
                    self._generation += 1
                    try:
                        await self._fan_out("pause", lambda admin: admin.pause())
                    except BaseException:
                        await self._undo_pause()
                        raise
                    self._set_paused(paused=True)
            finally:
                if self._pending is scope:
                    self._pending = None
        if scope.cancelled_caught:
            raise PauseSuperseded

    async def _undo_pause(self) -> None:
        # Runs after every PAUSE task has ended (the fan-out's task group has exited), so
        # this RESUME can never race our own PAUSE on one PgBouncer.
        resumed = False
        with anyio.move_on_after(self._cleanup, shield=True) as cleanup:
            try:
                await self._fan_out("resume", lambda admin: admin.resume())
                resumed = True
            except PgBouncersFailed as exc:
                _log.error(
                    "clients.pgbouncer.resume",
                    msg="RESUME after a failed pause failed: PgBouncer may be paused",
                    reason="pause_abandoned",
                    error=str(exc),
                )
        if cleanup.cancelled_caught:
            _log.error(
                "clients.pgbouncer.resume",
                msg="RESUME after a failed pause timed out: PgBouncer may be paused",
                reason="pause_abandoned",
                outcome="timeout",
            )
        # A RESUME that failed leaves some PgBouncer paused, or unknown: keep counting it
        # as paused so the owner retries the resume and the exit path still sends one.
        self._set_paused(paused=not resumed)

    async def resume(self, *, reason: str, only_generation: int | None = None) -> bool:
        """RESUME every PgBouncer; not being paused is success (idempotent).

        Args:
            reason: why, for logs (``requested``, ``expired``, ``shutdown``...).
            only_generation: resume only if no pause started since :attr:`generation`
                had this value (an expiry timer must never lift a newer pause); a pause
                still waiting is then left alone. When None, a pause still waiting is
                cancelled first, and undoes itself.

        Returns:
            False when ``only_generation`` is stale and nothing was sent.

        Raises:
            PgBouncersFailed: some PgBouncer refused or could not be reached.
        """
        if only_generation is None and self._pending is not None:
            self._pending.cancel()
        async with self._lock:
            if only_generation is not None and only_generation != self._generation:
                _log.info(
                    "clients.pgbouncer.resume.skipped",
                    reason=reason,
                    msg="a newer pause owns PgBouncer; not resuming",
                )
                return False
            started = time.monotonic()
            await self._fan_out("resume", lambda admin: admin.resume())
            self._set_paused(paused=False)
        _log.info(
            "clients.pgbouncer.resume.all",
            reason=reason,
            endpoints=self.endpoints,
            elapsed=time.monotonic() - started,
        )
        return True

    async def _fan_out(
        self, operation: str, call: Callable[[PgBouncerAdminProtocol], Awaitable[None]]
    ) -> None:
        # All must finish: one PgBouncer failing does not stop the others, and
        # every failure is reported, never "last error wins" (E5).
        failures: dict[str, Exception] = {}

        async def one(admin: PgBouncerAdminProtocol) -> None:
            try:
                await call(admin)
            except PgBouncerError as exc:
                failures[str(admin.endpoint)] = exc

        async with anyio.create_task_group() as tg:
            for admin in self._admins:
                tg.start_soon(one, admin)
        if failures:
            raise PgBouncersFailed(operation, failures)
