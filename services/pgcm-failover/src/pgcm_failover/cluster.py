"""The Pacemaker/PostgreSQL side of a switchover, as the supervises publish it in etcd.

Every pgcm-supervise writes a :class:`~pgcm_common.records.NodeStatus` under
``<ns>/supervise/<node>`` (on a lease, refreshed every publish interval). This module
reads them, drops records older than ``max_age`` (their writer is stuck or gone) and
builds one :class:`ClusterSnapshot`: the freshest quorate writer's Pacemaker view, each
node's PgBouncer paused state, and the primary's PostgreSQL facts when published.

:class:`NodeStatusCluster` implements ``pipeline.Cluster`` on top of it:

* ``preflight`` refuses a switchover that would hurt clients, with the precise reason;
* ``wait_settled`` waits for the "safe clear rule" (docs/lab.md): the target is the only promoted
  node, holds the top promotion score alone, and no online standby has a negative score
  (PAF gives the primary 1001; we compare with the maximum instead of hard-coding it).
  With the legacy ``ocf:heartbeat:pgsql`` agent (negative standby scores are normal
  there) it waits for the target to be the only node whose data-status is LATEST.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import final

import anyio
import structlog

from pgcm_common.etcd import EtcdStore
from pgcm_common.pacemaker import Role
from pgcm_common.records import (
    KeyLayout,
    NodeRole,
    NodeStatus,
    PostgresStatus,
    RecordError,
    now_utc,
)
from pgcm_failover.errors import FailoverAborted
from pgcm_failover.maintenance import maintenance_refusal, maintenance_state
from pgcm_failover.pipeline import PreflightResult

__all__ = [
    "LEGACY_PGSQL_AGENT",
    "ClusterSnapshot",
    "NodeStatusCluster",
    "check_preflight",
    "is_legacy_pgsql",
    "is_promoted",
    "is_standby",
    "pacemaker_trouble",
    "read_snapshot",
    "settle_problems",
]

log = structlog.get_logger("pgcm_failover.cluster")

Now = Callable[[], datetime]


def _role(node: NodeRole) -> Role | None:
    return Role.from_crm_mon(node.role)


def is_promoted(node: NodeRole) -> bool:
    """Return whether Pacemaker runs the promoted instance on ``node``."""
    return _role(node) is Role.PROMOTED


def is_standby(node: NodeRole) -> bool:
    """Return whether ``node`` runs an unpromoted (standby) instance."""
    return _role(node) is Role.UNPROMOTED


@final
@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """Fresh NodeStatus records, and the one whose Pacemaker view we trust.

    Attributes:
        statuses: every fresh record, by writer node.
        stale: writer nodes whose record is older than the limit.
        invalid: keys holding something that is not a NodeStatus.
        view: the freshest record with quorum, or None.
    """

    statuses: Mapping[str, NodeStatus]
    stale: tuple[str, ...] = ()
    invalid: tuple[str, ...] = ()
    view: NodeStatus | None = None
    problems_without_quorum: tuple[str, ...] = field(default=())

    @property
    def nodes(self) -> tuple[NodeRole, ...]:
        """Return the nodes of the trusted view (empty without one)."""
        return () if self.view is None else self.view.nodes

    @property
    def primary(self) -> str | None:
        """Return the promoted node of the trusted view."""
        return None if self.view is None else self.view.primary

    def node(self, name: str) -> NodeRole | None:
        """Return one node of the trusted view."""
        return next((n for n in self.nodes if n.name == name), None)


async def read_snapshot(
    store: EtcdStore, layout: KeyLayout, *, max_age: timedelta, now: Now = now_utc
) -> ClusterSnapshot:
    """Read every NodeStatus and keep the fresh, well-formed ones.

    Raises:
        EtcdError: etcd cannot be read.
    """
    listing = await store.get_prefix(layout.supervise_prefix)
    fresh: dict[str, NodeStatus] = {}
    stale: list[str] = []
    invalid: list[str] = []
    limit = now() - max_age
    for kv in listing.items:
        try:
            status = NodeStatus.from_json(kv.key, kv.value)
        except RecordError as exc:
            log.warning("failover.node_status.invalid", error=str(exc))
            invalid.append(kv.key.decode(errors="replace"))
            continue
        if status.observed_at < limit:
            stale.append(status.node)
            continue
        previous = fresh.get(status.node)
        if previous is None or status.observed_at > previous.observed_at:
            fresh[status.node] = status
    quorate = [s for s in fresh.values() if s.with_quorum]
    view = max(quorate, key=lambda s: s.observed_at, default=None)
    without = tuple(sorted(s.node for s in fresh.values() if not s.with_quorum))
    return ClusterSnapshot(
        statuses=fresh,
        stale=tuple(sorted(stale)),
        invalid=tuple(invalid),
        view=view,
        problems_without_quorum=without,
    )


LEGACY_PGSQL_AGENT = "ocf:heartbeat:pgsql"
"""The legacy resource agent; anything else (PAF's ``ocf:heartbeat:pgsqlms``) uses scores."""

_LATEST = "LATEST"


def is_legacy_pgsql(view: NodeStatus) -> bool:
    """Return whether ``view`` describes the legacy ``ocf:heartbeat:pgsql`` agent.

    Older supervises do not publish the agent; a published ``<rsc>-data-status`` only
    exists with the legacy agent, so it identifies it as well.
    """
    if view.resource_agent is not None:
        return view.resource_agent == LEGACY_PGSQL_AGENT
    return any(n.data_status is not None for n in view.nodes)


def settle_problems(snapshot: ClusterSnapshot, target: str) -> list[str]:
    """Return why it is not yet safe to clear the move constraint (empty: safe).

    The rule (docs/lab.md), with PAF: ``target`` is the only promoted node and holds the top
    promotion score, no other node has that score, and no online standby has a negative
    score. The legacy ``ocf:heartbeat:pgsql`` agent gives async/potential standbys and
    the just-demoted primary ``-INFINITY`` for good, so there the rule is: ``target`` is
    the only promoted node, its ``<rsc>-data-status`` is ``LATEST``, and no other node
    is ``LATEST``.
    """
    view = snapshot.view
    if view is None:
        return ["no fresh NodeStatus with quorum"]
    problems: list[str] = []
    nodes = snapshot.nodes
    promoted = sorted(n.name for n in nodes if is_promoted(n))
    if promoted != [target]:
        problems.append(f"promoted: {', '.join(promoted) or 'none'} (want only {target})")
    if is_legacy_pgsql(view):
        return problems + _legacy_settle_problems(nodes, target)
    scores = {n.name: n.promotion_score for n in nodes if n.promotion_score is not None}
    top = max(scores.values(), default=None)
    if top is None or scores.get(target) != top:
        problems.append(f"{target} does not hold the top promotion score ({scores})")
    elif [name for name, score in scores.items() if score == top] != [target]:
        problems.append(f"another node shares the top promotion score {top} ({scores})")
    negative = sorted(
        n.name
        for n in nodes
        if n.online and is_standby(n) and n.promotion_score is not None and n.promotion_score < 0
    )
    if negative:
        problems.append(f"standby with a negative promotion score: {', '.join(negative)}")
    return problems


def _legacy_settle_problems(nodes: tuple[NodeRole, ...], target: str) -> list[str]:
    problems: list[str] = []
    status = {n.name: n.data_status for n in nodes}
    if status.get(target) != _LATEST:
        problems.append(f"{target} data-status is {status.get(target)}, not {_LATEST}")
    others = sorted(name for name, value in status.items() if value == _LATEST and name != target)
    if others:
        problems.append(f"other node(s) with data-status {_LATEST}: {', '.join(others)}")
    return problems


@final
class NodeStatusCluster:
    """``pipeline.Cluster`` over the NodeStatus records in etcd."""

    def __init__(
        self,
        store: EtcdStore,
        layout: KeyLayout,
        *,
        max_age: timedelta,
        poll_interval: timedelta,
        max_lag_bytes: int,
        now: Now = now_utc,
    ) -> None:
        self._store = store
        self._layout = layout
        self._max_age = max_age
        self._poll_s = poll_interval.total_seconds()
        self._max_lag_bytes = max_lag_bytes
        self._now = now

    async def snapshot(self) -> ClusterSnapshot:
        """Read the current snapshot (see :func:`read_snapshot`)."""
        return await read_snapshot(self._store, self._layout, max_age=self._max_age, now=self._now)

    async def preflight(
        self, target_node: str | None, *, max_transaction_age: timedelta
    ) -> PreflightResult:
        """Check that a switchover now would not hurt clients; return the plan.

        Raises:
            FailoverAborted: maintenance mode is on, no fresh view, no quorum, no single
                primary, a failed or blocked instance or pending fencing, a leftover move
                constraint, no usable target, a target not
                streaming or behind, or a transaction on the primary older than
                ``max_transaction_age``.
            EtcdError: etcd cannot be read.
        """
        # Read again here, with the lock held: the early check may not have reached etcd.
        refusal = maintenance_refusal(await maintenance_state(self._store, self._layout))
        if refusal is not None:
            raise FailoverAborted(refusal)
        return check_preflight(
            await self.snapshot(),
            target_node,
            max_transaction_age=max_transaction_age,
            max_lag_bytes=self._max_lag_bytes,
            max_age=self._max_age,
        )

    async def wait_settled(self, target_node: str) -> None:
        """Poll the records until :func:`settle_problems` finds nothing (caller bounds it)."""
        last: list[str] = []
        while True:
            problems = settle_problems(await self.snapshot(), target_node)
            if not problems:
                log.info("failover.pacemaker.settled", target=target_node)
                return
            if problems != last:
                log.info("failover.pacemaker.wait", target=target_node, problems=problems)
                last = problems
            await anyio.sleep(self._poll_s)


def pacemaker_trouble(snapshot: ClusterSnapshot) -> list[str]:
    """Return the failed or blocked instances and pending fencing any fresh record shows.

    Every fresh record counts, not only the trusted view: fencing history and instance
    flags are cluster-wide facts, and the freshest writer may not have seen them yet.
    """
    found: dict[str, None] = {}
    for status in snapshot.statuses.values():
        for trouble in status.troubled_instances:
            found[f"instance {trouble.describe()}"] = None
        for fencing in status.pending_fencing:
            found[f"fencing {fencing.describe()}"] = None
    return list(found)


def _choose_target(snapshot: ClusterSnapshot, target_node: str | None) -> tuple[NodeRole, str]:
    primary = snapshot.primary
    if target_node is not None:
        node = snapshot.node(target_node)
        if node is None:
            known = ", ".join(n.name for n in snapshot.nodes)
            raise FailoverAborted(f"target {target_node} is not a cluster node (nodes: {known})")
        if target_node == primary:
            raise FailoverAborted(f"target {target_node} is already the primary")
        if not node.online:
            raise FailoverAborted(f"target {target_node} is offline")
        if not is_standby(node):
            raise FailoverAborted(f"target {target_node} is not a standby (role {node.role})")
        return node, "named with --target"
    candidates = [n for n in snapshot.nodes if n.online and is_standby(n) and n.name != primary]
    if not candidates:
        raise FailoverAborted("no online standby to promote")
    best = max(candidates, key=lambda n: (n.promotion_score is not None, n.promotion_score or 0))
    others = ", ".join(f"{n.name}={n.promotion_score}" for n in candidates if n.name != best.name)
    reason = (
        "the cluster's choice: online standby with the highest promotion score "
        f"({best.promotion_score})"
    )
    if others:
        reason += f"; others: {others}"
    return best, reason


def check_preflight(
    snapshot: ClusterSnapshot,
    target_node: str | None,
    *,
    max_transaction_age: timedelta,
    max_lag_bytes: int,
    max_age: timedelta,
) -> PreflightResult:
    """Apply the pre-flight rules to one snapshot (pure; see :meth:`NodeStatusCluster.preflight`).

    Raises:
        FailoverAborted: with the precise reason.
    """
    if not snapshot.statuses:
        raise FailoverAborted(
            f"no NodeStatus newer than {max_age.total_seconds():g}s in etcd: is pgcm-supervise "
            f"running and publishing? (stale: {', '.join(snapshot.stale) or 'none'})"
        )
    if snapshot.problems_without_quorum:
        raise FailoverAborted(
            f"no quorum as seen from {', '.join(snapshot.problems_without_quorum)}"
        )
    view = snapshot.view
    if view is None:  # pragma: no cover - fresh records all have quorum here
        raise FailoverAborted("no fresh NodeStatus with quorum")
    # Before the primary checks: a blocked primary or a node being fenced is the
    # reason the primary looks wrong, and the operator must hear that one.
    trouble = pacemaker_trouble(snapshot)
    if trouble:
        raise FailoverAborted(
            "Pacemaker needs a human first: "
            + "; ".join(trouble)
            + " (see 'pgcm-failover status' for what to do)"
        )
    primary = view.primary
    promoted = [n.name for n in view.nodes if is_promoted(n)]
    if primary is None or promoted != [primary]:
        raise FailoverAborted(
            f"no single promoted primary (primary={primary}, promoted={promoted or 'none'})"
        )
    if view.move_constraints:
        raise FailoverAborted(
            f"leftover move constraint(s): {', '.join(view.move_constraints)}; "
            f"run 'pgcm-failover cleanup' first"
        )
    target, reason = _choose_target(snapshot, target_node)
    notes: list[str] = []
    facts = snapshot.statuses.get(primary)
    pg = None if facts is None else facts.postgres
    if pg is None:
        notes.append(
            f"no PostgreSQL facts published by {primary}: relying on Pacemaker promotion "
            f"scores (>= 0) for catch-up, and transaction ages were not checked"
        )
        _check_score(target)
        lag = None
    else:
        lag = _check_postgres(
            pg,
            primary,
            target.name,
            max_transaction_age=max_transaction_age,
            max_lag_bytes=max_lag_bytes,
        )
    negative = sorted(
        n.name
        for n in view.nodes
        if n.online and is_standby(n) and n.promotion_score is not None and n.promotion_score < 0
    )
    if negative and target.name not in negative:
        notes.append(f"standby with a negative promotion score: {', '.join(negative)}")
    return PreflightResult(
        old_primary=primary,
        target=target.name,
        reason=reason,
        lag_bytes=lag,
        notes=tuple(notes),
    )


def _check_score(target: NodeRole) -> None:
    if target.promotion_score is None:
        raise FailoverAborted(
            f"cannot tell whether {target.name} is caught up: no PostgreSQL facts and no "
            f"promotion score"
        )
    if target.promotion_score < 0:
        raise FailoverAborted(
            f"target {target.name} has a negative promotion score "
            f"({target.promotion_score}): not caught up"
        )


def _check_postgres(
    pg: PostgresStatus,
    primary: str,
    target: str,
    *,
    max_transaction_age: timedelta,
    max_lag_bytes: int,
) -> int | None:
    peer = next((r for r in pg.replication if r.application_name == target), None)
    if peer is None:
        streaming = ", ".join(r.application_name for r in pg.replication) or "none"
        raise FailoverAborted(
            f"target {target} is not replicating from {primary} (pg_stat_replication: {streaming})"
        )
    if peer.state != "streaming":
        raise FailoverAborted(f"target {target} is not streaming (state {peer.state})")
    lag = peer.lag_bytes
    if lag is not None and lag > max_lag_bytes:
        raise FailoverAborted(f"target {target} is {lag} bytes behind (limit {max_lag_bytes})")
    age = pg.oldest_transaction_age_s
    limit = max_transaction_age.total_seconds()
    if age is not None and age > limit:
        raise FailoverAborted(
            f"a transaction on {primary} has been open {age:.1f}s, longer than the pause "
            f"timeout {limit:g}s: PAUSE would wait for it"
        )
    return lag
