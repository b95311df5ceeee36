"""Hold new transactions while the primary this proxy routes to is lost.

pgcm-supervise writes ``<ns>/hold`` (a :class:`~pgcm_common.records.HoldRecord`) when
the published primary is lost and no new one is published yet; see
``pgcm_supervise.hold`` for who may write it. While the record names the address this
proxy's PgBouncers route to, the :class:`Holder` keeps them PAUSEd: PgBouncer queues new
transactions instead of failing them against the dead server during its login-retry
wait. In-flight transactions on the lost primary fail as they must.

The hold ends, and PgBouncer is RESUMEd, at the first of:

* a new primary applied (``applied``): RELOAD has already pointed PgBouncer at it, so
  the queued transactions go there;
* the record deleted while etcd names the address PgBouncer already routes to (the
  same primary came back; when etcd names another one, the hold lasts until it is
  applied: the deletion may arrive before the new address on the other watch);
* the record's deadline, or ``hold_limit`` after the hold began, whichever is sooner:
  a hold can never outlive either, even when etcd is unreachable.

A hold record that does not parse, names another address, or is already past its
deadline is ignored. One record holds once: after it ran out here, the same record does
not pause again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Final, final

import anyio
import structlog
from anyio.abc import TaskGroup

from pgcm_common.errors import EtcdError
from pgcm_common.etcd import Deleted, KeyValue, WatchEvent
from pgcm_common.pausing import PauseController, PauseSuperseded, PgBouncersFailed
from pgcm_common.records import HoldRecord, RecordError, now_utc
from pgcm_proxy.address import parse_primary_address
from pgcm_proxy.errors import RejectedAddress
from pgcm_proxy.metrics import ProxyMetrics

__all__ = ["Holder"]

log = structlog.get_logger("pgcm.proxy.hold")

_RESUME_RETRY_S: Final = 0.5
_RECHECK_S: Final = 0.5
_SHUTDOWN_RESUME_S: Final = 5.0


@final
class Holder:
    """Pause this proxy's PgBouncers while ``<ns>/hold`` names the address they route to.

    Args:
        pauser: PAUSE/RESUME of this proxy's PgBouncers as one unit.
        limit: the longest hold, whatever the record says; zero disables holding.
        published_host: reads the primary's address in etcd now (None when absent);
            raises ``EtcdError`` when etcd cannot say.
        metrics: the proxy's metrics.
        monotonic: clock for deadlines (tests pass their own).
        wall: clock the record's deadline is compared with.
    """

    def __init__(
        self,
        pauser: PauseController,
        *,
        limit: timedelta,
        published_host: Callable[[], Awaitable[str | None]],
        metrics: ProxyMetrics,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = now_utc,
    ) -> None:
        self._pauser = pauser
        self._limit_s = limit.total_seconds()
        self._published_host = published_host
        self._metrics = metrics
        self._monotonic = monotonic
        self._wall = wall
        self._record: HoldRecord | None = None
        self._record_revision = 0
        self._spent_revision = 0  # the record that last held here: never again
        self._applied: str | None = None
        self._lost: str | None = None  # the address we hold for, while holding
        self._deadline = math.inf
        self._changed = anyio.Event()

    @property
    def holding(self) -> bool:
        """Return whether a hold is in force here."""
        return self._lost is not None

    def offer(self, event: WatchEvent) -> None:
        """Take one event of the hold key (a put or a deletion)."""
        if isinstance(event, Deleted):
            self._record = None
        else:
            self._record = self._parse(event)
            self._record_revision = event.mod_revision
        self._changed.set()

    def applied(self, host: str) -> None:
        """PgBouncer now routes to ``host`` (a confirmed apply)."""
        self._applied = host
        self._changed.set()

    async def resume_orphaned(self) -> None:
        """RESUME PgBouncer once at start-up, unless a hold is in force here.

        A proxy killed while holding leaves its PgBouncers paused, and PgBouncer 1.18
        cannot say whether it is: the caller makes sure no switchover holds the
        failover lock (pgcm-failover's own pause must not be lifted), then this sends
        one RESUME (a PgBouncer that is not paused answers it as a success).
        """
        if self.holding or self._limit_s <= 0:
            return
        try:
            await self._pauser.resume(reason="startup")
        except PgBouncersFailed as exc:
            log.warning("proxy.hold.startup_resume_failed", error=str(exc))

    def _parse(self, kv: KeyValue) -> HoldRecord | None:
        try:
            record = HoldRecord.from_json(kv.key, kv.value)
            # Compared with the applied host in the form the proxy writes it.
            host = parse_primary_address(record.lost_address.encode()).host
        except (RecordError, RejectedAddress) as exc:
            log.warning("etcd.hold.malformed", error=str(exc), msg="ignoring the hold record")
            return None
        return record.model_copy(update={"lost_address": host})

    async def run(self) -> None:
        """Hold and release until cancelled; on cancellation a hold in force is released.

        Cancellation:
            Resumes PgBouncer first (shielded, bounded by the pauser's cleanup).
        """
        if self._limit_s <= 0:
            await anyio.sleep_forever()
        try:
            async with anyio.create_task_group() as tg:
                while True:
                    self._changed = anyio.Event()
                    if not self.holding and self._should_start():
                        self._start(tg)
                    elif self.holding and (outcome := await self._should_end()) is not None:
                        await self._end(outcome)
                    with anyio.move_on_after(self._wait_s()):
                        await self._changed.wait()
        finally:
            if self.holding:
                with anyio.move_on_after(_SHUTDOWN_RESUME_S, shield=True):
                    await self._end("shutdown")

    def _wait_s(self) -> float:
        if not self.holding:
            return math.inf
        left = max(0.0, self._deadline - self._monotonic())
        # Record gone but not released yet: etcd is asked again until it says.
        return min(left, _RECHECK_S) if self._record is None else left

    def _should_start(self) -> bool:
        record = self._record
        if record is None or self._record_revision == self._spent_revision:
            return False
        if self._applied is None or record.lost_address != self._applied:
            return False
        return record.deadline > self._wall()

    def _start(self, tg: TaskGroup) -> None:
        record = self._record
        assert record is not None  # noqa: S101 - _should_start checked it
        left_s = (record.deadline - self._wall()).total_seconds()
        self._deadline = self._monotonic() + min(left_s, self._limit_s)
        self._lost = record.lost_address
        self._spent_revision = self._record_revision
        self._metrics.holding.set(1)
        log.warning(
            "proxy.hold.start",
            lost_node=record.lost_node,
            lost_address=record.lost_address,
            reason=record.reason,
            writer=record.writer,
            hold_s=round(min(left_s, self._limit_s), 3),
            msg="the primary is lost: holding new transactions until a new one is applied",
        )
        tg.start_soon(self._pause, self._deadline)

    async def _pause(self, deadline: float) -> None:
        # PAUSE returns only once in-flight transactions ended; PgBouncer queues new
        # ones from the moment it received the command, so nobody waits for this.
        try:
            with anyio.fail_after(max(0.0, deadline - self._monotonic())):
                await self._pauser.pause()
        except PauseSuperseded:
            return  # the hold ended first; the pause undid itself
        except (PgBouncersFailed, TimeoutError) as exc:
            log.warning("proxy.hold.pause_failed", error=str(exc) or "timeout",
                        msg="PAUSE did not complete; PgBouncer was resumed")  # fmt: skip

    async def _should_end(self) -> str | None:
        if self._monotonic() >= self._deadline:
            return "expired"
        if self._applied != self._lost:
            return "applied"
        if self._record is None:
            try:
                published = await self._published_host()
            except EtcdError as exc:
                log.warning("etcd.hold.check_failed", error=str(exc), msg="holding on")
                return None
            if published in {None, self._applied}:
                return "released"
        return None

    async def _end(self, outcome: str) -> None:
        while True:
            try:
                await self._pauser.resume(reason=f"hold_{outcome}")
                break
            except PgBouncersFailed as exc:
                log.error("proxy.hold.resume_failed", error=str(exc),
                          msg="RESUME failed; retrying: clients wait")  # fmt: skip
                await anyio.sleep(_RESUME_RETRY_S)
        log.info(
            "proxy.hold.end",
            outcome=outcome,
            lost_address=self._lost,
            applied=self._applied,
            msg="holding ended; PgBouncer resumed",
        )
        self._lost = None
        self._deadline = math.inf
        self._metrics.holding.set(0)
        self._metrics.holds.labels(outcome=outcome).inc()
