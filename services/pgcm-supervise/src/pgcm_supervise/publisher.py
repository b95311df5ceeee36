"""Publish Pacemaker's primary to etcd: ``<ns><master_key>`` (bare address) and its record.

Every supervise of a cluster runs this concurrently. They agree without flapping because:

* :func:`decide` publishes only from a *stable* view: this node's partition has quorum,
  exactly one instance is promoted, nothing is promoting or demoting, and the promoted
  instance is active, not failed, on an online and clean node. Anything else is a
  :class:`Refuse` and nothing is written: the last good value stays.
* the address and the :class:`~pgcm_common.records.PrimaryRecord` beside it are written
  in ONE etcd transaction (``put_all_if``), guarded on both keys' revisions as this
  publisher last read or wrote them: both change at one revision or neither does, so a
  reader never sees an address and a record that disagree, and two writers never lose
  each other's update (the loser writes nothing and re-reads on its next cycle). A new
  primary is first tried on the revisions last seen, without reading the keys again
  (two round trips less on the switchover's path); a failed guard means someone wrote
  meanwhile, and the keys are read and the view decided again at once.
* the record carries ``observed_at``, the time the writer *started* its crm_mon read
  (and Pacemaker's CIB ``last_change``). A writer whose view is older than the record's
  never changes the address or the record's primary (``stale_view``): a slow crm_mon
  cannot move the published primary backwards, not even after the address was deleted.

The key is re-checked at least every ``reassert_interval`` and re-written when missing
or different, so a deleted key heals (the original never did).
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Protocol, TypeAlias, final

import anyio
import structlog
from anyio.abc import TaskStatus

from pgcm_common.errors import EtcdError, PacemakerError
from pgcm_common.etcd import Absent, Condition, EtcdStore, Guard, KeyValue, ModRevisionIs, Write
from pgcm_common.pacemaker import (
    ClusterState,
    CrmMonParseError,
    CrmMonReader,
    InTransition,
    Node,
    NodeAddressResolver,
    NodeAddressUnknown,
    NoPrimary,
    NoQuorum,
    PromotableResourceNotFound,
    ResourceInstance,
    SeveralPrimaries,
    SinglePrimary,
)
from pgcm_common.records import KeyLayout, PrimaryRecord, RecordError, now_utc
from pgcm_supervise.metrics import SuperviseMetrics
from pgcm_supervise.nudge import Wakeup

__all__ = [
    "FAST_FOLLOW_WINDOW",
    "HoldSink",
    "Observation",
    "PrimaryPublisher",
    "Publish",
    "PublishOutcome",
    "RefusalReason",
    "Refuse",
    "StatusSink",
    "cib_time",
    "decide",
    "decide_promoted",
    "read_observation",
    "serve_publisher",
]

log = structlog.get_logger("pgcm.supervise.publisher")

FAST_FOLLOW_WINDOW: Final = timedelta(seconds=3)
"""How long after a promote nudge crm_mon is re-read fast while nothing is publishable."""

NOTICE_MAX_AGE_S: Final = 1.0
"""A promote notice is published at once only on a read started at most this long ago."""


class RefusalReason(enum.StrEnum):
    """Why a cycle published nothing (the ``reason`` label of the refusals metric)."""

    NO_QUORUM = "no_quorum"
    NO_PRIMARY = "no_primary"
    SEVERAL_PRIMARIES = "several_primaries"
    IN_TRANSITION = "in_transition"
    PRIMARY_UNHEALTHY = "primary_unhealthy"
    CRM_MON_FAILED = "crm_mon_failed"
    UNPARSEABLE = "unparseable"
    ADDRESS_UNKNOWN = "address_unknown"
    STALE_VIEW = "stale_view"


@final
@dataclass(frozen=True, slots=True)
class Publish:
    """The view is stable: ``node`` is the primary."""

    node: Node


@final
@dataclass(frozen=True, slots=True)
class Refuse:
    """Publish nothing this cycle, for ``reason`` (``detail`` is for humans)."""

    reason: RefusalReason
    detail: str


Decision: TypeAlias = Publish | Refuse


def decide(state: ClusterState) -> Decision:
    """Return whether ``state`` names a primary that may be published, and which.

    Pure and synchronous: the same snapshot always gives the same decision.
    """
    match state.primary:
        case NoQuorum(promoted=promoted):
            return Refuse(
                RefusalReason.NO_QUORUM,
                f"this node's partition has no quorum (it believes promoted: {list(promoted)})",
            )
        case InTransition(promoted=promoted, promoting=promoting, demoting=demoting):
            return Refuse(
                RefusalReason.IN_TRANSITION,
                f"promoted {list(promoted)}, promoting {list(promoting)}, "
                f"demoting {list(demoting)}",
            )
        case SeveralPrimaries(nodes=nodes):
            return Refuse(RefusalReason.SEVERAL_PRIMARIES, f"promoted on {list(nodes)}")
        case NoPrimary():
            return Refuse(RefusalReason.NO_PRIMARY, f"no instance of {state.clone_id} promoted")
        case SinglePrimary(node=name, instance=instance):
            node = state.node(name)
            problems = _primary_problems(node, instance)
            if node is None or problems:
                return Refuse(RefusalReason.PRIMARY_UNHEALTHY, f"{name}: {', '.join(problems)}")
            return Publish(node)


def decide_promoted(state: ClusterState, name: str) -> Decision:
    """Return whether ``state`` plus Pacemaker's report that ``name`` was promoted publishes it.

    ``state`` is a read taken while the promote ran: it must have quorum and show
    ``name`` promoting, no instance promoted and none demoting (the old primary's demote
    already recorded), with ``name``'s node online, clean and not pending. The report
    (the alert agent's ``rc=0`` for the promote) completes that view into the one the
    next read would show; anything else is refused, and the next read decides.
    """
    match state.primary:
        case InTransition(promoted=(), promoting=(promoting,), demoting=()) if promoting == name:
            node = state.node(name)
            problems = _node_problems(node)
            if node is None or problems:
                return Refuse(RefusalReason.PRIMARY_UNHEALTHY, f"{name}: {', '.join(problems)}")
            return Publish(node)
        case other:
            return Refuse(
                RefusalReason.IN_TRANSITION,
                f"promote of {name} reported, but the last read showed {other!r}",
            )


def _node_problems(node: Node | None) -> list[str]:
    if node is None:
        return ["node not listed"]
    flags = {
        "node offline": not node.online,
        "node unclean": node.unclean,
        "node pending": node.pending,
    }
    return [text for text, bad in flags.items() if bad]


def _primary_problems(node: Node | None, instance: ResourceInstance) -> list[str]:
    problems = []
    if node is None:
        problems.append("node not listed")
    else:
        flags = {
            "node offline": not node.online,
            "node unclean": node.unclean,
            "node pending": node.pending,
        }
        problems += [text for text, bad in flags.items() if bad]
    if instance.failed:
        problems.append("instance failed")
    if not instance.active:
        problems.append("instance not active")
    return problems


@final
@dataclass(frozen=True, slots=True)
class Observation:
    """One crm_mon read: the state or why there is none, and when the read started."""

    state: ClusterState | None
    error: Exception | None
    observed_at: datetime

    def decision(self) -> Decision:
        """Return :func:`decide` of the state, or the refusal the read error means."""
        if self.state is not None:
            return decide(self.state)
        error = self.error
        if isinstance(error, CrmMonParseError | PromotableResourceNotFound):
            return Refuse(RefusalReason.UNPARSEABLE, str(error))
        return Refuse(RefusalReason.CRM_MON_FAILED, str(error))


async def read_observation(
    reader: CrmMonReader,
    *,
    clock: Callable[[], datetime] = now_utc,
    metrics: SuperviseMetrics | None = None,
) -> Observation:
    """Read crm_mon once; never raise for a failed read.

    The reader bounds itself (``CrmMonOptions.timeout``, the ``crm_mon_timeout``
    setting) and raises ``TimeoutError`` naming the command; that is a failed read too.

    Cancellation:
        The reader kills crm_mon; the cancellation propagates.
    """
    observed_at = clock()
    started = time.monotonic()
    try:
        state = await reader.read_cluster_state()
    except TimeoutError as exc:
        return _failed(exc, observed_at, metrics, "timeout")
    except (CrmMonParseError, PromotableResourceNotFound) as exc:
        return _failed(exc, observed_at, metrics, "unparseable")
    except PacemakerError as exc:
        return _failed(exc, observed_at, metrics, "failed")
    finally:
        if metrics is not None:
            metrics.crm_mon_duration.observe(time.monotonic() - started)
    if metrics is not None:
        metrics.crm_mon_reads.labels("ok").inc()
        metrics.observe_pacemaker(state)
    return Observation(state, None, observed_at)


def _failed(
    error: Exception, observed_at: datetime, metrics: SuperviseMetrics | None, outcome: str
) -> Observation:
    if metrics is not None:
        metrics.crm_mon_reads.labels(outcome).inc()
    return Observation(None, error, observed_at)


class PublishOutcome(enum.Enum):
    """What one :meth:`PrimaryPublisher.publish` did."""

    WROTE = "wrote"
    """etcd now holds this view (the address, the record, or both were written)."""
    UNCHANGED = "unchanged"
    """etcd already held this view; nothing was written."""
    NOT_CHECKED = "not_checked"
    """The view is the one last confirmed and the re-assert interval has not elapsed."""
    REFUSED = "refused"
    """The view is not publishable (see the log and the refusals metric)."""
    CONFLICT = "conflict"
    """A concurrent writer changed the key between our read and our write."""


@final
class PrimaryPublisher:
    """Compare-and-put the primary's address and record into etcd; keep the last value.

    Args:
        store: etcd.
        layout: the cluster's keys.
        resolver: node -> client address (corosync or static map).
        writer: this node's name, recorded as the record's writer.
        reassert_interval: check etcd at least this often when the view is unchanged.
        metrics: where to count; None for none.
        monotonic: clock for the re-assert interval (tests pass their own).
    """

    def __init__(
        self,
        *,
        store: EtcdStore,
        layout: KeyLayout,
        resolver: NodeAddressResolver,
        writer: str,
        reassert_interval: timedelta,
        metrics: SuperviseMetrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._layout = layout
        self._resolver = resolver
        self._writer = writer
        self._reassert_s = reassert_interval.total_seconds()
        self._metrics = metrics
        self._monotonic = monotonic
        self._confirmed: tuple[str, str] | None = None
        self._confirmed_at = 0.0
        self._last_refusal: tuple[RefusalReason, str] | None = None
        self._address_cache: dict[tuple[str, str], str] = {}
        self._seen: _Seen | None = None

    @property
    def confirmed(self) -> tuple[str, str] | None:
        """Return the ``(node, address)`` etcd was last seen or made to hold, or None."""
        return self._confirmed

    def force_check(self) -> None:
        """Make the next :meth:`publish` read etcd even if the view is unchanged."""
        self._confirmed_at = float("-inf")
        self._address_cache.clear()

    async def publish(
        self, observation: Observation, *, promoted: str | None = None
    ) -> PublishOutcome:
        """Publish ``observation``'s primary when it is stable; otherwise keep etcd as is.

        Args:
            observation: the read to decide on.
            promoted: Pacemaker reported this node promoted after ``observation``'s read:
                decide with :func:`decide_promoted` instead. Its refusal is quiet (no
                warning, no refusal counted): the regular read that follows decides.

        Raises:
            EtcdError: etcd failed (the caller retries next cycle).
        """
        decision = self._decide(observation, promoted)
        if isinstance(decision, PublishOutcome):
            return decision
        node = decision.node
        try:
            address = await self._address_of(node)
        except NodeAddressUnknown as exc:
            return self._refuse(Refuse(RefusalReason.ADDRESS_UNKNOWN, str(exc)))
        view = (node.name, address)
        due = self._monotonic() - self._confirmed_at >= self._reassert_s
        if view == self._confirmed and not due:
            self._last_refusal = None
            return PublishOutcome.NOT_CHECKED
        try:
            outcome = await self._put(observation, node.name, address)
        except EtcdError:
            if self._metrics is not None:
                self._metrics.etcd_errors.inc()
            raise
        if outcome in {PublishOutcome.WROTE, PublishOutcome.UNCHANGED}:
            self._last_refusal = None
            self._confirmed = view
            self._confirmed_at = self._monotonic()
            if self._metrics is not None:
                self._metrics.set_published_primary(*view)
                self._metrics.last_publication.set(time.time())
        return outcome

    def _decide(self, observation: Observation, promoted: str | None) -> Publish | PublishOutcome:
        """The node to publish, or the outcome of a refusal (see :meth:`publish`)."""
        if promoted is None:
            decision = observation.decision()
            return self._refuse(decision) if isinstance(decision, Refuse) else decision
        if observation.state is None:
            return PublishOutcome.REFUSED
        decision = decide_promoted(observation.state, promoted)
        if isinstance(decision, Refuse):
            log.debug("pacemaker.promote_notice.unconfirmed", detail=decision.detail)
            return PublishOutcome.REFUSED
        return decision

    async def _address_of(self, node: Node) -> str:
        # corosync-cfgtool costs a process per call; ring addresses change only when the
        # cluster is reconfigured, and force_check() (every nudge) forgets the cache.
        key = (node.name, node.id)
        cached = self._address_cache.get(key)
        if cached is None:
            cached = await self._resolver.address_of(node)
            self._address_cache[key] = cached
        return cached

    async def _put(self, observation: Observation, node: str, address: str) -> PublishOutcome:
        if (node, address) != self._confirmed and self._seen is not None:
            # A new primary to publish: first try the transaction guarded on the keys as
            # last seen, without reading them again (two etcd round trips saved on the
            # switchover's path). If a guard fails, someone wrote meanwhile: read and
            # decide again. Anything but a write is also decided again on a fresh read,
            # so a refusal never rests on what we saw earlier.
            optimistic = await self._write_if(observation, node, address, self._seen, quiet=True)
            if optimistic is PublishOutcome.WROTE:
                return optimistic
        seen = await self._read_keys()
        return await self._write_if(observation, node, address, seen, quiet=False)

    async def _read_keys(self) -> _Seen:
        layout, store = self._layout, self._store
        found: dict[bytes, KeyValue | None] = {}

        async def read(key: bytes) -> None:
            found[key] = await store.get(key)

        async with anyio.create_task_group() as tg:
            for key in (layout.master, layout.master_record):
                tg.start_soon(read, key)
        self._seen = _Seen(found[layout.master], found[layout.master_record])
        return self._seen

    async def _write_if(
        self, observation: Observation, node: str, address: str, seen: _Seen, *, quiet: bool
    ) -> PublishOutcome:
        """Write what differs from ``seen``, guarded on ``seen``'s revisions.

        ``quiet``: the optimistic try; its refusal or conflict is neither logged nor
        counted (the fresh read that follows decides).
        """
        layout = self._layout
        current, record_kv = seen.master, seen.record
        record = _parse_record(record_kv, quiet=quiet)
        value = address.encode()
        if record is not None and _backwards(current, record, observation, node, address):
            if quiet:
                return PublishOutcome.REFUSED
            shown = "nothing" if current is None else repr(current.value)
            return self._refuse(
                Refuse(
                    RefusalReason.STALE_VIEW,
                    f"etcd has {shown} and a record of {record.node} ({record.address}) "
                    f"from {record.writer} observed at {record.observed_at.isoformat()}, "
                    f"after our read at {observation.observed_at.isoformat()}",
                )
            )
        write_master = current is None or current.value != value
        write_record = record is None or (record.node, record.address) != (node, address)
        writes: list[Write] = []
        if write_master:
            writes.append(Write(layout.master, value))
        if write_record:
            writes.append(Write(layout.master_record, self._record(observation, node, address)))
        if not writes:
            return PublishOutcome.UNCHANGED
        # One transaction guarded on both keys as read, even when only one is written: a
        # reader never sees the address and the record disagree, and a concurrent
        # writer's change to either key makes ours a no-op (read again, next cycle or at
        # once after an optimistic try).
        result = await self._store.put_all_if(
            (
                Guard(layout.master, _unchanged(current)),
                Guard(layout.master_record, _unchanged(record_kv)),
            ),
            writes,
        )
        if not result.succeeded:
            self._seen = None
            return (
                PublishOutcome.CONFLICT if quiet else self._conflict(node, address, result.revision)
            )
        self._seen = _Seen(
            _written(current, layout.master, writes, result.revision),
            _written(record_kv, layout.master_record, writes, result.revision),
        )
        if write_master:
            self._count("master")
            log.info(
                "etcd.master.publish",
                key=layout.master.decode(),
                node=node,
                address=address,
                previous=None if current is None else current.value.decode("utf-8", "replace"),
                revision=result.revision,
                msg="published the primary's address",
            )
        if write_record:
            self._count("record")
            log.debug(
                "etcd.master_record.publish",
                key=layout.master_record.decode(),
                node=node,
                revision=result.revision,
            )
        return PublishOutcome.WROTE

    def _record(self, observation: Observation, node: str, address: str) -> bytes:
        state = observation.state
        return PrimaryRecord(
            node=node,
            address=address,
            with_quorum=state.with_quorum if state is not None else False,
            dc=state.dc if state is not None else None,
            writer=self._writer,
            observed_at=observation.observed_at,
            pacemaker_last_change=state.last_change if state is not None else None,
        ).to_json()

    def _count(self, key: str) -> None:
        if self._metrics is not None:
            self._metrics.publications.labels(key).inc()

    def _conflict(self, node: str, address: str, revision: int) -> PublishOutcome:
        if self._metrics is not None:
            self._metrics.conflicts.inc()
        log.info(
            "etcd.master.conflict",
            key=self._layout.master.decode(),
            record_key=self._layout.master_record.decode(),
            node=node,
            address=address,
            revision=revision,
            msg="another writer changed the address or its record between our read and our "
            "write; nothing written, re-reading",
        )
        self.force_check()
        return PublishOutcome.CONFLICT

    def _refuse(self, refusal: Refuse) -> PublishOutcome:
        if self._metrics is not None:
            self._metrics.refusals.labels(refusal.reason.value).inc()
        # Log each new reason once at warning level: at two reads a second a persistent
        # condition (a partition) would otherwise drown the journal.
        key = (refusal.reason, refusal.detail)
        level = log.warning if key != self._last_refusal else log.debug
        self._last_refusal = key
        level(
            "pacemaker.primary.unknown",
            reason=refusal.reason.value,
            detail=refusal.detail,
            kept=None if self._confirmed is None else self._confirmed[1],
            msg="not publishing a primary; etcd keeps its last value",
        )
        return PublishOutcome.REFUSED


def _backwards(
    current: KeyValue | None,
    record: PrimaryRecord,
    observation: Observation,
    node: str,
    address: str,
) -> bool:
    """Return whether publishing ``(node, address)`` would move etcd back to an older view.

    True when ``record`` comes from a newer view than ours and we would change either
    the address (to a different one) or the record's primary. Healing a deleted address
    that the newer record agrees with is not backwards.
    """
    if not _newer(record, observation):
        return False
    changes_address = current is not None and current.value != address.encode()
    changes_record = (record.node, record.address) != (node, address)
    return changes_address or changes_record


def _newer(record: PrimaryRecord, observation: Observation) -> bool:
    """Return whether ``record`` was published from a view newer than ``observation``.

    Ordered by Pacemaker's CIB ``last_change`` first: it is the same value on every node
    for one CIB version, so no writer's clock skew enters. crm_mon prints no CIB epoch,
    and ``last_change`` has whole seconds and does not move on every status change, so
    equal or unknown values fall back to the writers' ``observed_at`` (clock skew between
    nodes remains a risk there).
    """
    ours = observation.state.last_change_time if observation.state is not None else None
    theirs = cib_time(record.pacemaker_last_change)
    if ours is not None and theirs is not None and ours != theirs:
        return theirs > ours
    return record.observed_at > observation.observed_at


def cib_time(text: str | None) -> datetime | None:
    """Parse crm_mon's ``last_change`` time (local, whole seconds); None when unknown."""
    if text is None:
        return None
    try:
        return datetime.strptime(text, "%a %b %d %H:%M:%S %Y")  # noqa: DTZ007 - crm_mon's local time, compared only with itself
    except ValueError:
        return None


def _unchanged(kv: KeyValue | None) -> Condition:
    return Absent() if kv is None else ModRevisionIs(kv.mod_revision)


def _parse_record(kv: KeyValue | None, *, quiet: bool = False) -> PrimaryRecord | None:
    if kv is None:
        return None
    try:
        return PrimaryRecord.from_json(kv.key, kv.value)
    except RecordError as exc:
        if not quiet:
            log.warning("etcd.master_record.malformed", error=str(exc), msg="overwriting it")
        return None


@final
@dataclass(frozen=True, slots=True)
class _Seen:
    """The address and record keys as this publisher last read or wrote them."""

    master: KeyValue | None
    record: KeyValue | None


def _written(
    before: KeyValue | None, key: bytes, writes: list[Write], revision: int
) -> KeyValue | None:
    """``key`` after a successful transaction at ``revision`` applied ``writes``."""
    value = next((w.value for w in writes if w.key == key), None)
    if value is None:
        return before
    if before is None:
        return KeyValue(key, value, create_revision=revision, mod_revision=revision, version=1)
    return KeyValue(
        key,
        value,
        create_revision=before.create_revision,
        mod_revision=revision,
        version=before.version + 1,
    )


async def _publish_notice(publisher: PrimaryPublisher, last: Observation, promoted: str) -> None:
    """Publish ``promoted`` on Pacemaker's report if ``last`` confirms it (see ``publish``).

    The decision rests on ``last``'s read and the report, received now: the record
    says it was observed now. The regular read follows at once either way.
    """
    observation = Observation(last.state, last.error, now_utc())
    try:
        await publisher.publish(observation, promoted=promoted)
    except EtcdError as exc:
        log.warning("etcd.master.publish_failed", error=str(exc), msg="the next read retries")


class StatusSink(Protocol):
    """Receives every observation (the NodeStatus publisher)."""

    async def observe(self, observation: Observation) -> None:
        """Handle one observation; must not raise for etcd trouble (log it)."""
        ...


async def _pass_on(
    observation: Observation,
    outcome: PublishOutcome | None,
    hold: HoldSink | None,
    status: StatusSink | None,
) -> None:
    """Hand one cycle to the hold keeper (first: clients wait on it), then the status."""
    if hold is not None:
        await hold.observe(observation, outcome)
    if status is not None:
        await status.observe(observation)


class HoldSink(Protocol):
    """Receives every observation with what publishing it did (the hold keeper)."""

    async def observe(self, observation: Observation, outcome: PublishOutcome | None) -> None:
        """Hold or release clients; must not raise for etcd trouble (log it)."""
        ...


async def serve_publisher(
    *,
    reader: CrmMonReader,
    publisher: PrimaryPublisher,
    wakeup: Wakeup,
    interval: timedelta,
    retry_interval: timedelta,
    transition_interval: timedelta | None = None,
    promote_notice: bool = False,
    status: StatusSink | None = None,
    hold: HoldSink | None = None,
    metrics: SuperviseMetrics | None = None,
    on_cycle: Callable[[], None] | None = None,
    task_status: TaskStatus[PublishOutcome | None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Read crm_mon and publish every ``interval`` and on every nudge, until cancelled.

    Readiness: ``task_status.started`` after the first cycle, with its outcome (None when
    etcd failed). An etcd failure waits ``retry_interval`` (a nudge still wakes it).

    Fast follow: after the alert agent reports a promote, while the view is not
    publishable yet (Pacemaker logs the promote and fires the alert just before the CIB
    records it), crm_mon is re-read every ``transition_interval`` for at most
    :data:`FAST_FOLLOW_WINDOW`. A switchover's clients stay paused until etcd names the
    new primary: waiting a whole ``interval`` for the next read would hold them that
    much longer. Only a promote starts it: re-reading fast through the whole
    demote → promote chain would compete for CPU with the very transition it waits for.

    Promote notice (with ``promote_notice``): when the alert agent reports a successful
    promote of a node, and the last completed read (started at most
    :data:`NOTICE_MAX_AGE_S` ago, with quorum) showed that node promoting and nothing
    else promoted or demoting, that node is published at once (:func:`decide_promoted`),
    also while a read is running: a crm_mon read (~0.1 s on a busy node) earlier than
    the read that follows, which confirms it or corrects etcd.

    Cancellation:
        Stops between or inside cycles; crm_mon is killed by the reader.
    """
    lock = anyio.Lock()
    latest = _LatestRead()
    async with anyio.create_task_group() as tg:
        if promote_notice:
            tg.start_soon(_serve_notices, publisher, wakeup, latest, lock)
        started = False
        fast_until = -math.inf
        while True:
            read_started = anyio.current_time()
            observation = await read_observation(reader, metrics=metrics)
            latest.observation, latest.started = observation, read_started
            async with lock:
                outcome = await _publish(publisher, observation)
            await _pass_on(observation, outcome, hold, status)
            if on_cycle is not None:
                on_cycle()
            if not started:
                started = True
                task_status.started(outcome)
            pause = interval if outcome is not None else max(interval, retry_interval)
            following = outcome is PublishOutcome.REFUSED and anyio.current_time() < fast_until
            if following and transition_interval is not None:
                pause = min(pause, transition_interval)
            if await wakeup.wait(pause.total_seconds()):
                # A nudge means Pacemaker just changed something: check etcd at once too.
                publisher.force_check()
                if wakeup.take_promotion():
                    fast_until = anyio.current_time() + FAST_FOLLOW_WINDOW.total_seconds()


async def _publish(publisher: PrimaryPublisher, observation: Observation) -> PublishOutcome | None:
    """One cycle's publication; None when etcd failed."""
    try:
        return await publisher.publish(observation)
    except EtcdError as exc:
        log.warning("etcd.master.publish_failed", error=str(exc), msg="retrying")
    except RecordError as exc:  # pragma: no cover - _parse_record already handles it
        # A malformed record must never stop the loop: the next cycle overwrites it.
        publisher.force_check()
        log.warning("etcd.master_record.malformed", error=str(exc), msg="overwriting it")
    return None


@final
@dataclass(slots=True)
class _LatestRead:
    """The last completed crm_mon read and when (``anyio.current_time``) it started."""

    observation: Observation | None = None
    started: float = -math.inf


async def _serve_notices(
    publisher: PrimaryPublisher, wakeup: Wakeup, latest: _LatestRead, lock: anyio.Lock
) -> None:
    """Publish each reported promote that the latest read confirms, while reads go on.

    A notice is handled at once, also while a read is running: waiting for that read
    to end would cost up to a read (~0.1 s on a busy node). ``lock`` keeps this and the
    read loop from publishing at the same time.
    """
    while True:
        promoted = await wakeup.wait_promoted()
        observation = latest.observation
        if observation is None or anyio.current_time() - latest.started > NOTICE_MAX_AGE_S:
            log.debug("pacemaker.promote_notice.no_recent_read", node=promoted)
            continue
        async with lock:
            await _publish_notice(publisher, observation, promoted)
