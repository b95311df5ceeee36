"""What the operator sees: live progress, the final report, the plan and the status.

Everything here is pure (values in, text or JSON-able dicts out) except
:class:`ProgressDisplay`, which writes carriage-return lines to a terminal stream.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO, final

from pgcm_common.records import (
    HoldRecord,
    MaintenanceRecord,
    NodeRole,
    ProxyAck,
    SwitchoverRecord,
)
from pgcm_failover.advice import PacemakerAttention, what_to_do
from pgcm_failover.pipeline import Phase, Report
from pgcm_failover.terminal import printable

__all__ = [
    "CleanupResult",
    "EndpointHealth",
    "JsonValue",
    "NodeReplication",
    "Plan",
    "ProgressDisplay",
    "ProxyRow",
    "Status",
    "dumps",
    "history_to_dict",
    "maintenance_to_dict",
    "plan_to_dict",
    "render_cleanup",
    "render_history",
    "render_maintenance",
    "render_plan",
    "render_report",
    "render_status",
    "report_to_dict",
    "status_to_dict",
    "total_seconds",
]

JsonValue = str | int | float | bool | None | list["JsonValue"] | dict[str, "JsonValue"]


def dumps(value: JsonValue) -> str:
    """Serialise for ``--json`` (stable key order, one trailing newline)."""
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def _text(lines: Sequence[str]) -> str:
    """Join rendered lines for a terminal: each line made printable, one newline each.

    Every human rendering ends here, so no value from etcd or a peer can put a control
    character on the operator's terminal; a value holding a newline cannot forge a line.
    """
    return "".join(printable(line) + "\n" for line in lines)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    # Escape cells before measuring them, so the columns stay aligned.
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.extend(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
    return lines


# ----------------------------------------------------------------------------- report


def report_to_dict(report: Report, *, outcome: str) -> dict[str, JsonValue]:
    """Return the report as JSON-able data (``outcome``: succeeded / rolled_back / needs_human)."""
    phases: list[JsonValue] = [
        {"name": p.name, "ok": p.ok, "seconds": p.seconds, "detail": p.detail or None}
        for p in report.phases
    ]
    target: JsonValue = (
        None
        if report.target is None
        else {"node": report.target.node, "address": report.target.address}
    )
    return {
        "outcome": outcome,
        "error": report.error,
        "old_primary": report.old_primary,
        "planned_target": report.planned_target,
        "target": target,
        "phases": phases,
        "paused_seconds": report.paused_seconds,
        "total_seconds": _total(report.phases),
        "proxies_acknowledged": list(report.proxies_acknowledged),
        "proxies_late": list(report.proxies_late),
        "notes": list(report.notes),
        "needs_human": list(report.needs_human),
    }


def total_seconds(report: Report) -> float | None:
    """Return the switchover's duration from its first phase's start to its last end."""
    return _total(report.phases)


def _total(phases: Sequence[Phase]) -> float | None:
    if not phases:
        return None
    ends = [p.finished for p in phases if p.finished is not None]
    return (max(ends) - phases[0].started) if ends else None


def render_report(report: Report, *, outcome: str) -> str:
    """Return the report as a human-readable table."""
    title = {
        "succeeded": "Switchover succeeded",
        "rolled_back": "Switchover FAILED and was rolled back",
        "needs_human": "Switchover FAILED: a human is needed",
    }.get(outcome, outcome)
    lines = [title, ""]
    target = report.target
    lines.append(f"old primary:  {report.old_primary or '-'}")
    lines.append(
        f"new primary:  {target.node} ({target.address})"
        if target
        else f"new primary:  - (planned: {report.planned_target or '-'})"
    )
    lines.append(f"paused for:   {_secs(report.paused_seconds)}")
    lines.append(f"total:        {_secs(_total(report.phases))}")
    acked = ", ".join(report.proxies_acknowledged) or "none"
    lines.append(f"proxies acknowledged: {acked}")
    if report.proxies_late:
        lines.append(f"proxies late (resumed without them): {', '.join(report.proxies_late)}")
    if report.error:
        lines.append(f"error:        {report.error}")
    lines.append("")
    rows = [
        [
            p.name,
            "ok" if p.ok else ("running" if p.finished is None else "FAILED"),
            _secs(p.seconds),
            p.detail,
        ]
        for p in report.phases
    ]
    lines.extend(_table(["phase", "result", "time", "detail"], rows))
    lines.extend(f"note: {note}" for note in report.notes)
    lines.extend(f"NEEDS A HUMAN: {item}" for item in report.needs_human)
    return _text(lines)


@final
class ProgressDisplay:
    """Live phase-by-phase progress on a terminal: one line per phase, updated in place."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, phase: Phase) -> None:
        """Show ``phase`` (started, finished or failed)."""
        # Only this display's own sequences may reach the terminal: the phase's name
        # and detail (which can quote a peer's error) are escaped.
        name = printable(phase.name)
        if phase.finished is None:
            self._stream.write(f"\r\x1b[K… {name}")
        elif phase.ok:
            self._stream.write(f"\r\x1b[K✓ {name} ({_secs(phase.seconds)})\n")
        else:
            detail = printable(phase.detail)
            self._stream.write(f"\r\x1b[K✗ {name} ({_secs(phase.seconds)}): {detail}\n")
        self._stream.flush()


# ------------------------------------------------------------------------------- plan


@final
@dataclass(frozen=True, slots=True)
class EndpointHealth:
    """One endpoint's health as seen by ``--dry-run`` / ``cleanup``."""

    endpoint: str
    healthy: bool
    reasons: tuple[str, ...] = ()


@final
@dataclass(frozen=True, slots=True)
class ProxyRow:
    """One registered proxy and its last ack (None: unreadable record)."""

    proxy_id: str
    ack: ProxyAck | None


@final
@dataclass(frozen=True, slots=True)
class Plan:
    """What ``--dry-run`` found; ``refused`` says why a switchover now would stop."""

    endpoints: tuple[EndpointHealth, ...]
    old_primary: str | None
    target: str | None
    reason: str | None
    refused: str | None
    proxies: tuple[ProxyRow, ...]
    replication: tuple[tuple[str, str, int | None], ...]
    oldest_transaction_age_s: float | None
    notes: tuple[str, ...] = ()

    @property
    def would_proceed(self) -> bool:
        """Return whether a switchover now would get past pre-flight."""
        return self.refused is None and all(e.healthy for e in self.endpoints)


def _ack_dict(ack: ProxyAck | None) -> JsonValue:
    if ack is None:
        return None
    return {"host": ack.host, "revision": ack.revision, "applied_at": ack.applied_at.isoformat()}


def plan_to_dict(plan: Plan) -> dict[str, JsonValue]:
    """Return the plan as JSON-able data."""
    return {
        "would_proceed": plan.would_proceed,
        "refused": plan.refused,
        "old_primary": plan.old_primary,
        "target": plan.target,
        "reason": plan.reason,
        "endpoints": [
            {"endpoint": e.endpoint, "healthy": e.healthy, "reasons": list(e.reasons)}
            for e in plan.endpoints
        ],
        "proxies": [{"proxy_id": p.proxy_id, "ack": _ack_dict(p.ack)} for p in plan.proxies],
        "replication": [
            {"application_name": n, "state": s, "lag_bytes": lag} for n, s, lag in plan.replication
        ],
        "oldest_transaction_age_s": plan.oldest_transaction_age_s,
        "notes": list(plan.notes),
    }


def render_plan(plan: Plan, *, dry_run: bool = True) -> str:
    """Return the plan as text.

    Args:
        plan: what a switchover now would do.
        dry_run: title it as a dry run (``--dry-run``) rather than as the plan the
            operator is asked to confirm.
    """
    title = "Dry run: nothing will be changed." if dry_run else "Switchover plan:"
    lines = [title, ""]
    lines.append(f"primary now:  {plan.old_primary or '-'}")
    lines.append(
        f"target:       {plan.target or '-'}" + (f" ({plan.reason})" if plan.reason else "")
    )
    lines.append("")
    lines.extend(
        _table(
            ["supervise endpoint", "health"],
            [
                [e.endpoint, "HEALTHY" if e.healthy else "UNHEALTHY: " + "; ".join(e.reasons)]
                for e in plan.endpoints
            ],
        )
    )
    lines.append("")
    if plan.proxies:
        lines.append("proxies that will be waited for:")
        lines.extend(
            _table(
                ["proxy", "routes to", "revision"],
                [
                    [
                        p.proxy_id,
                        p.ack.host if p.ack else "(unreadable ack)",
                        str(p.ack.revision) if p.ack else "-",
                    ]
                    for p in plan.proxies
                ],
            )
        )
    else:
        lines.append("proxies that will be waited for: none registered (etcd only)")
    lines.append("")
    if plan.replication:
        lines.extend(
            _table(
                ["standby", "state", "lag"],
                [[n, s, "-" if lag is None else f"{lag} bytes"] for n, s, lag in plan.replication],
            )
        )
    else:
        lines.append("replication: no PostgreSQL facts published")
    age = plan.oldest_transaction_age_s
    lines.append(f"oldest transaction on the primary: {'-' if age is None else f'{age:.1f}s'}")
    lines.extend(f"note: {note}" for note in plan.notes)
    lines.append("")
    lines.append(
        "A switchover now would proceed."
        if plan.would_proceed
        else f"A switchover now would be REFUSED: {plan.refused or 'an endpoint is unhealthy'}"
    )
    return _text(lines)


# ----------------------------------------------------------------------------- status


@final
@dataclass(frozen=True, slots=True)
class NodeReplication:
    """One node's PostgreSQL facts as ``status`` shows them (None: not published).

    Attributes:
        timeline: the timeline the node writes (primary) or receives (standby).
        state: ``primary``, or the standby's ``pg_stat_replication`` state on the
            primary (``streaming``, ``catchup``, ...), or ``not replicating`` when the
            primary lists no row for it.
        sync_state: ``sync``, ``async``, ``potential`` or ``quorum`` (standbys only).
        lag_bytes: how far the standby's replay is behind the primary's WAL.
        lag_s: the standby's replay lag in seconds, as PostgreSQL measured it.
    """

    timeline: int | None = None
    state: str | None = None
    sync_state: str | None = None
    lag_bytes: int | None = None
    lag_s: float | None = None


@final
@dataclass(frozen=True, slots=True)
class Status:
    """Everything ``pgcm-failover status`` shows."""

    nodes: tuple[NodeRole, ...]
    quorum: Mapping[str, bool]
    view_from: str | None
    dc: str | None
    etcd_primary: str | None
    primary_record_node: str | None
    primary_observed_at: datetime | None
    primary_age_s: float | None
    proxies: tuple[ProxyRow, ...]
    pgbouncer_paused: Mapping[str, bool | None]
    lock_holder: str | None
    lock_token: int | None
    move_constraints: tuple[str, ...]
    stale: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=())
    replication: Mapping[str, NodeReplication] = field(default_factory=dict)
    maintenance: MaintenanceRecord | None = None
    attention: PacemakerAttention = field(default_factory=PacemakerAttention)
    hold: HoldRecord | None = None


def hold_to_dict(record: HoldRecord | None) -> JsonValue:
    """Return the hold record as JSON-able data (None: no hold)."""
    if record is None:
        return None
    return {
        "lost_node": record.lost_node,
        "lost_address": record.lost_address,
        "reason": record.reason,
        "since": record.since.isoformat(),
        "deadline": record.deadline.isoformat(),
        "writer": record.writer,
    }


def render_hold(record: HoldRecord | None) -> str | None:
    """Return one line about clients held while the primary is lost, or None."""
    if record is None:
        return None
    return (
        f"hold: proxies routed to {record.lost_address} hold new transactions "
        f"since {record.since.isoformat(timespec='seconds')} (primary "
        f"{record.lost_node} lost: {record.reason}; at most until "
        f"{record.deadline.isoformat(timespec='seconds')})"
    )


def maintenance_to_dict(record: MaintenanceRecord | None) -> JsonValue:
    """Return the maintenance record as JSON-able data (None: never switched)."""
    if record is None:
        return None
    return {
        "enabled": record.enabled,
        "reason": record.reason,
        "by": record.by,
        "at": record.at.isoformat(),
        "endpoint": record.endpoint,
    }


def render_maintenance(record: MaintenanceRecord | None) -> str:
    """Return one line saying whether maintenance mode is on, since when, who and why."""
    if record is None:
        return "maintenance: off"
    state = "ON" if record.enabled else "off"
    return (
        f"maintenance: {state} (since {record.at.isoformat(timespec='seconds')} by "
        f"{record.by}: {record.reason})"
    )


def _replication_dict(facts: NodeReplication | None) -> JsonValue:
    if facts is None:
        return None
    return {
        "timeline": facts.timeline,
        "state": facts.state,
        "sync_state": facts.sync_state,
        "lag_bytes": facts.lag_bytes,
        "lag_s": facts.lag_s,
    }


def status_to_dict(status: Status) -> dict[str, JsonValue]:
    """Return the status as JSON-able data."""
    return {
        "nodes": [
            {
                "name": n.name,
                "online": n.online,
                "role": n.role,
                "promotion_score": n.promotion_score,
                "postgres": _replication_dict(status.replication.get(n.name)),
            }
            for n in status.nodes
        ],
        "quorum": dict(status.quorum),
        "view_from": status.view_from,
        "dc": status.dc,
        "etcd_primary": {
            "address": status.etcd_primary,
            "node": status.primary_record_node,
            "observed_at": None
            if status.primary_observed_at is None
            else status.primary_observed_at.isoformat(),
            "age_s": status.primary_age_s,
        },
        "proxies": [
            {
                "proxy_id": p.proxy_id,
                "ack": _ack_dict(p.ack),
                "routes_to_primary": None if p.ack is None else p.ack.host == status.etcd_primary,
            }
            for p in status.proxies
        ],
        "pgbouncer_paused": dict(status.pgbouncer_paused),
        "lock": None
        if status.lock_holder is None and status.lock_token is None
        else {"holder": status.lock_holder, "fencing_token": status.lock_token},
        "move_constraints": list(status.move_constraints),
        "maintenance": maintenance_to_dict(status.maintenance),
        "hold": hold_to_dict(status.hold),
        "stale": list(status.stale),
        "problems": list(status.problems),
        "troubled_instances": [
            {
                "resource": i.resource,
                "node": i.node,
                "role": i.role,
                "failed": i.failed,
                "blocked": i.blocked,
                "managed": i.managed,
            }
            for i in status.attention.instances
        ],
        "fencing": [
            {
                "target": f.target,
                "action": f.action,
                "state": f.state,
                "origin": f.origin,
                "client": f.client,
                "delegate": f.delegate,
                "completed": f.completed,
                "reason": f.reason,
            }
            for f in status.attention.fencing
        ],
        "fencing_from": status.attention.fencing_from,
        "fencing_unknown": status.attention.fencing_unknown,
        "what_to_do": list(what_to_do(status.attention)),
    }


def render_status(status: Status) -> str:
    """Return the status as tables."""
    lines: list[str] = []
    quorum = ", ".join(f"{n}={'yes' if q else 'NO'}" for n, q in sorted(status.quorum.items()))
    lines.append(
        f"quorum:  {quorum or '-'} (view from {status.view_from or '-'}, dc {status.dc or '-'})"
    )
    rows = [
        [
            n.name,
            "online" if n.online else "OFFLINE",
            n.role,
            "-" if n.promotion_score is None else str(n.promotion_score),
            *_replication_cells(status.replication.get(n.name)),
            _paused(status.pgbouncer_paused.get(n.name, None), n.name in status.pgbouncer_paused),
        ]
        for n in status.nodes
    ]
    header = ["node", "state", "role", "score", "timeline", "replication", "lag", "lag time"]
    lines.extend(_table([*header, "pgbouncer"], rows))
    lines.append("")
    age = "-" if status.primary_age_s is None else f"{status.primary_age_s:.1f}s ago"
    lines.append(
        f"etcd primary: {status.etcd_primary or '(none)'} "
        f"(node {status.primary_record_node or '-'}, published {age})"
    )
    lines.append("")
    if status.proxies:
        lines.extend(
            _table(
                ["proxy", "routes to", "revision", "applied"],
                [
                    [
                        p.proxy_id,
                        (
                            p.ack.host
                            + ("" if p.ack.host == status.etcd_primary else "  (NOT the primary)")
                        )
                        if p.ack
                        else "(unreadable ack)",
                        str(p.ack.revision) if p.ack else "-",
                        p.ack.applied_at.isoformat() if p.ack else "-",
                    ]
                    for p in status.proxies
                ],
            )
        )
    else:
        lines.append("proxies: none registered")
    lines.append("")
    if status.lock_token is None:
        lines.append("lock: free")
    else:
        holder = status.lock_holder or "(unreadable holder)"
        lines.append(f"lock: held by {holder} (token {status.lock_token})")
    constraints = ", ".join(status.move_constraints) or "none"
    lines.append(f"move constraints: {constraints}")
    lines.append(render_maintenance(status.maintenance))
    if (hold := render_hold(status.hold)) is not None:
        lines.append(hold)
    if status.stale:
        lines.append(f"stale supervise records (ignored): {', '.join(status.stale)}")
    lines.extend(f"problem: {p}" for p in status.problems)
    lines.extend(_attention_lines(status.attention))
    return _text(lines)


def _attention_lines(attention: PacemakerAttention) -> list[str]:
    """Return the failed/blocked instances, fencing history and next steps, if any."""
    lines: list[str] = []
    for instance in attention.instances:
        word = "BLOCKED" if instance.blocked else "FAILED"
        lines.append(f"{word} instance: {instance.describe()}")
    if attention.fencing:
        lines.append(f"fencing (as {attention.fencing_from} sees it, newest first):")
        for record in attention.fencing:
            marker = {"pending": "PENDING", "failed": "FAILED"}.get(record.state, record.state)
            lines.append(f"  {marker}: {record.describe()}")
    if attention.fencing_unknown:
        lines.append(f"fencing history unknown: {attention.fencing_unknown}")
    steps = what_to_do(attention)
    if steps:
        lines.append("what to do:")
        lines.extend(f"  - {step}" for step in steps)
    return lines


def _replication_cells(facts: NodeReplication | None) -> list[str]:
    """Return the timeline, replication, lag and lag time cells of one node."""
    if facts is None:
        return ["-", "-", "-", "-"]
    timeline = "-" if facts.timeline is None else str(facts.timeline)
    state = facts.state or "-"
    if facts.sync_state and state == "streaming":
        state = facts.sync_state
    elif facts.sync_state:
        state = f"{facts.sync_state} ({state})"
    lag = "-" if facts.lag_bytes is None else f"{facts.lag_bytes} B"
    lag_s = "-" if facts.lag_s is None else f"{facts.lag_s:.3f}s"
    return [timeline, state, lag, lag_s]


def _paused(value: bool | None, known: bool) -> str:  # noqa: FBT001 - a small formatter
    if not known:
        return "(no supervise)"
    return {True: "PAUSED", False: "running", None: "unknown"}[value]


# ---------------------------------------------------------------------------- cleanup


@final
@dataclass(frozen=True, slots=True)
class CleanupResult:
    """What ``cleanup`` did and what it left for a human."""

    done: tuple[str, ...]
    needs_human: tuple[str, ...]


def render_cleanup(result: CleanupResult) -> str:
    """Return the cleanup result as text."""
    lines = [f"did: {item}" for item in result.done] or ["did: nothing (nothing to clean up)"]
    lines.extend(f"NEEDS A HUMAN: {item}" for item in result.needs_human)
    return _text(lines)


def cleanup_to_dict(result: CleanupResult) -> dict[str, JsonValue]:
    """Return the cleanup result as JSON-able data."""
    return {"done": list(result.done), "needs_human": list(result.needs_human)}


# ---------------------------------------------------------------------------- history


def history_to_dict(
    records: Sequence[SwitchoverRecord], invalid: Sequence[str]
) -> dict[str, JsonValue]:
    """Return the history (newest first) as JSON-able data."""
    switchovers: list[JsonValue] = [json.loads(r.to_json()) for r in records]
    return {"switchovers": switchovers, "unreadable": list(invalid)}


def render_history(records: Sequence[SwitchoverRecord], invalid: Sequence[str]) -> str:
    """Return the history (newest first): one row per run, its phase timings below it."""
    lines: list[str] = []
    if not records:
        lines.append("no switchover recorded")
    else:
        rows = [
            [
                r.started_at.astimezone(UTC).isoformat(timespec="seconds"),
                _secs((r.finished_at - r.started_at).total_seconds()),
                r.by,
                f"{r.old_primary or '-'} -> {r.target or r.planned_target or '-'}",
                r.outcome,
                _secs(r.paused_s),
            ]
            for r in records
        ]
        header, *table = _table(
            ["started (UTC)", "took", "by", "from -> to", "result", "paused"], rows
        )
        lines.append(header)
        for r, row in zip(records, table, strict=True):
            lines.append(row)
            phases = ", ".join(f"{p.name} {_secs(p.seconds)}" for p in r.phases)
            lines.append(f"    phases: {phases or '-'}")
            if r.error:
                lines.append(f"    error: {r.error}")
            lines.extend(f"    needs a human: {item}" for item in r.needs_human)
    lines.extend(f"unreadable record: {key}" for key in invalid)
    return _text(lines)
