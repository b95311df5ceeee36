"""Hold clients while the primary is lost: write and clear ``<ns>/hold``.

Between the loss of the primary (its node offline or unclean, its instance failed, or
no instance promoted) and the publication of the next one, new transactions sent
through a PgBouncer routed to the lost address fail at once: PgBouncer answers a
failing server with an error during its login-retry wait. A :class:`~pgcm_common.
records.HoldRecord` at ``<ns>/hold`` tells every pgcm-proxy routed to that address to
PAUSE its PgBouncers, so those transactions wait instead; the proxies resume as soon as
they applied the new primary, the record goes, or its deadline passes.

Who may hold whom:

* only a supervise whose Pacemaker partition has quorum writes the record, and etcd
  accepts the write only from its own quorum: a partitioned minority can neither pause
  nor re-point the majority's clients;
* the record lives on a lease of ``hold_timeout``: nobody stays paused past it, even if
  every supervise dies; each proxy also caps a hold with its own ``hold_limit``;
* no hold during a switchover (the failover lock is held): pgcm-failover pauses the
  clients itself;
* the record is created only when absent, so one loss is one hold with one deadline,
  however many supervises see it.

The record is removed once a primary is published again (the same node recovered, or a
new one): the proxies then resume after applying whatever etcd names.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final, final

import structlog

from pgcm_common.errors import EtcdError
from pgcm_common.etcd import Absent, EtcdStore
from pgcm_common.pacemaker import ClusterState, NoPrimary
from pgcm_common.records import HoldRecord, KeyLayout, PrimaryRecord, RecordError, now_utc
from pgcm_supervise.metrics import SuperviseMetrics
from pgcm_supervise.publisher import Observation, PublishOutcome, cib_time

__all__ = ["HoldKeeper", "primary_lost"]

log = structlog.get_logger("pgcm.supervise.hold")

_PUBLISHED: Final = frozenset(
    {PublishOutcome.WROTE, PublishOutcome.UNCHANGED, PublishOutcome.NOT_CHECKED}
)


def primary_lost(state: ClusterState, node_name: str) -> str | None:
    """Return why the primary published on ``node_name`` is lost in ``state``, or None.

    None also when this partition has no quorum (its view is not trusted), when the
    node is unknown (a reconfiguration, not a failure), and while a transition is under
    way without a failure (Pacemaker is moving the role; the publisher follows it).
    """
    node = state.node(node_name) if state.with_quorum else None
    if node is None:
        return None
    instance = next((i for i in state.instances if i.node == node_name), None)
    problems = {
        f"node {node_name} is offline": not node.online,
        f"node {node_name} is unclean (to be fenced)": node.unclean,
        f"the instance on {node_name} failed": instance is not None and instance.failed,
        f"no instance of {state.clone_id} is promoted": isinstance(state.primary, NoPrimary),
    }
    return next((text for text, lost in problems.items() if lost), None)


def _view_after(observation: Observation, hold: HoldRecord) -> bool:
    """Whether ``observation`` shows a newer Pacemaker state than the one that held.

    By the CIB's ``last_change`` when both are known (the same value on every node for
    one CIB version: no clock skew), else by when the reads began.
    """
    ours = observation.state.last_change_time if observation.state is not None else None
    theirs = cib_time(hold.pacemaker_last_change)
    if ours is not None and theirs is not None:
        return ours > theirs
    return observation.observed_at > hold.since


def _something_lost(state: ClusterState) -> bool:
    """Whether ``state`` could make any published primary lost (cheap, no etcd)."""
    if not state.with_quorum:
        return False
    return (
        isinstance(state.primary, NoPrimary)
        or any(not node.online or node.unclean for node in state.nodes)
        or any(instance.failed for instance in state.instances)
    )


@final
class HoldKeeper:
    """Create ``<ns>/hold`` when the published primary is lost; delete it once published.

    Args:
        store: etcd.
        layout: the cluster's keys.
        writer: this node's name, recorded in the record.
        timeout: the hold's lease and deadline; zero disables holding.
        metrics: where to count holds; None for none.
        clock: for ``since`` and ``deadline`` (tests pass their own).
    """

    def __init__(
        self,
        *,
        store: EtcdStore,
        layout: KeyLayout,
        writer: str,
        timeout: timedelta,
        metrics: SuperviseMetrics | None = None,
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        self._store = store
        self._layout = layout
        self._writer = writer
        self._timeout = timeout
        self._metrics = metrics
        self._now = clock
        # Whether a hold may exist: at start we do not know, afterwards only after we
        # saw a loss. Keeps the steady state free of an extra etcd read per cycle.
        self._maybe_held = True

    async def observe(self, observation: Observation, outcome: PublishOutcome | None) -> None:
        """Hold or release after one publish cycle; log etcd trouble, never raise it."""
        if self._timeout <= timedelta(0) or observation.state is None:
            return
        try:
            if outcome in _PUBLISHED:
                if self._maybe_held:
                    await self._release(observation)
                return
            await self._hold_if_lost(observation.state)
        except EtcdError as exc:
            log.warning("etcd.hold.error", error=str(exc), msg="hold not updated; next cycle")
        except RecordError as exc:
            log.warning("etcd.master_record.malformed", error=str(exc), msg="no hold")

    async def _release(self, observation: Observation) -> None:
        """Delete the hold once a primary is published again, judged from a fresh view.

        Every supervise reads crm_mon on its own clock, and the CIB reaches each node a
        moment apart: right after a loss, one supervise may still see the old primary
        healthy while another already held. Such a stale view must not lift the hold
        (the proxies would resume onto the lost primary), so the record goes only when
        etcd names another address than the lost one (a new primary), or when this
        view was read after the hold began (the same primary came back).
        """
        current = await self._store.get(self._layout.hold)
        if current is None:
            self._maybe_held = False
            return
        try:
            hold = HoldRecord.from_json(current.key, current.value)
        except RecordError as exc:
            log.warning("etcd.hold.malformed", error=str(exc), msg="deleting it")
        else:
            master = await self._store.get(self._layout.master)
            published = None if master is None else master.value.decode(errors="replace")
            if published == hold.lost_address and not _view_after(observation, hold):
                return  # our view may predate the loss: keep the hold, look again
        # A plain delete: a hold created since this read is for a loss the next cycle of
        # its writer sees again, and re-creates.
        if await self._store.delete(self._layout.hold):
            log.info(
                "etcd.hold.release",
                key=self._layout.hold.decode(),
                msg="a primary is published again: clients are released",
            )
        self._maybe_held = False

    async def _hold_if_lost(self, state: ClusterState) -> None:
        if not _something_lost(state):
            return  # a switchover's transition, say: no etcd request on that path
        record_kv = await self._store.get(self._layout.master_record)
        if record_kv is None:
            return
        published = PrimaryRecord.from_json(record_kv.key, record_kv.value)
        why = primary_lost(state, published.node)
        if why is None:
            return
        self._maybe_held = True
        if await self._store.get(self._layout.lock) is not None:
            return  # a switchover: pgcm-failover pauses the clients itself
        if await self._store.get(self._layout.hold) is not None:
            return  # held already (by us or another supervise): one loss, one hold
        since = self._now()
        record = HoldRecord(
            lost_node=published.node,
            lost_address=published.address,
            reason=why,
            since=since,
            deadline=since + self._timeout,
            writer=self._writer,
            pacemaker_last_change=state.last_change,
        )
        lease = await self._store.grant_lease(self._timeout)
        created = await self._store.put_if(
            self._layout.hold, record.to_json(), Absent(), lease=lease.id
        )
        if not created:
            await self._store.revoke_lease(lease.id)
            return
        if self._metrics is not None:
            self._metrics.holds.inc()
        log.warning(
            "etcd.hold.start",
            key=self._layout.hold.decode(),
            lost_node=published.node,
            lost_address=published.address,
            reason=why,
            deadline=record.deadline.isoformat(),
            msg="the primary is lost: proxies hold new transactions until a new one is published",
        )
