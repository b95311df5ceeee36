"""pgcm's share of a switchover's paused time, segment by segment, from the logs both sides write.

Clients are held from pgcm-failover's PAUSE to its RESUME. Inside that, Pacemaker and
PAF run their own move → promoted chain (:mod:`pgcm_lab.chain`), which pgcm does not
own; everything else is pgcm's share. This module splits that share into segments
between marks that each component already logs, so that a change can be judged on the
segment it targets:

======================  =====================  ==========================================
segment                 from → to              who
======================  =====================  ==========================================
``pause``               PAUSE sent → all       pgcm-failover's fan-out; each PgBouncer
                        paused                 waits for its running transactions
``to_move``             all paused → the move  the migrate call: supervise reads crm_mon,
                        constraint in the CIB  runs ``crm_resource --move``
``chain``               the constraint → PAF's Pacemaker/PAF (not pgcm's share)
                        promote succeeded
``to_etcd``             promote succeeded →    the alert agent's nudge, supervise's
                        supervise published    crm_mon read, the etcd transaction
``to_last_ack``         published → the last   every pgcm-proxy: watch event, file,
                        proxy's ack            RELOAD, SHOW DATABASES, ack put
``to_resume``           last ack → RESUME      pgcm-failover's ack watch waking up
                        sent
``resume``              RESUME sent → all      pgcm-failover's RESUME fan-out
                        resumed
======================  =====================  ==========================================

``share`` is the sum of every segment but ``chain``. The marks come from:
pgcm-failover's JSON log (``failover.phase.start``/``done`` of ``pause`` and
``resume``), Pacemaker's log (:func:`pgcm_lab.chain.promotion_chains`), supervise's
``etcd.master.publish`` line on whichever node wrote, and the ``applied_at`` of every
proxy's acknowledgement in etcd. All are wall-clock times of one host (the lab's
namespaces share its clock); Pacemaker writes local time without a year, which the lab
keeps at UTC.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

from pgcm_lab.chain import PromotionChain

__all__ = [
    "DETAILS",
    "SEGMENTS",
    "ShareError",
    "chain_within",
    "failover_marks",
    "json_events",
    "last_ack",
    "published_at",
    "record_observed",
    "segments",
    "summarize",
]

SEGMENTS: Final = (
    ("pause", "pause_started", "paused"),
    ("to_move", "paused", "moved"),
    ("chain", "moved", "promoted"),
    ("to_etcd", "promoted", "published"),
    ("to_last_ack", "published", "last_ack"),
    ("to_resume", "last_ack", "resume_started"),
    ("resume", "resume_started", "resumed"),
)
"""Each segment's name and the marks it runs between, in the order they happen."""

DETAILS: Final = (
    ("to_etcd.before_read", "promoted", "observed"),
    ("to_etcd.read_and_put", "observed", "published"),
    ("to_resume.ack_put", "last_ack", "acks_seen"),
    ("to_resume.wake", "acks_seen", "resume_started"),
)
"""``to_etcd`` split where the publishing crm_mon read started (the record's
``observed_at``): the nudge and any wait for a read that sees the promote, then that
read plus the etcd transaction. ``to_resume`` split where pgcm-failover logged that
every live proxy had acknowledged (``failover.proxy.acknowledged``): the last proxy's
ack put (its ``applied_at`` is stamped before the put), etcd's commit and the watch
event reaching pgcm-failover, then pgcm-failover leaving the wait and starting the
RESUME. Reported when the mark is known, never summed."""

# Pacemaker logs to the millisecond and may log the constraint a moment before
# pgcm-failover logs that the pause phase is done: a chain counts for a run when it
# starts no earlier than this before the pause.
_SLACK_S: Final = 0.5


class ShareError(ValueError):
    """A mark the breakdown needs is missing from the logs."""


def json_events(lines: Iterable[str], event: str) -> list[dict[str, object]]:
    """The JSON log records in ``lines`` whose ``event`` is ``event``, in order.

    A line may carry a prefix before its JSON object (a syslog priority, a supervisor's
    tag); lines that hold no JSON object are skipped.
    """
    found: list[dict[str, object]] = []
    needle = f'"{event}"'
    for line in lines:
        if needle not in line or "{" not in line:
            continue
        try:
            value = json.loads(line[line.index("{") :])
        except ValueError:
            continue
        if isinstance(value, dict) and value.get("event") == event:
            found.append({str(k): v for k, v in value.items()})
    return found


def _ts(record: Mapping[str, object]) -> datetime:
    raw = record.get("ts")
    if not isinstance(raw, str):
        raise ShareError(f"log record without a ts: {dict(record)!r}")
    stamp = datetime.fromisoformat(raw)
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def failover_marks(lines: Sequence[str]) -> dict[str, datetime]:
    """``pause_started``, ``paused``, ``acks_seen``, ``resume_started`` and ``resumed``.

    ``lines`` are one run's pgcm-failover JSON log (``--log-format json``, on stderr);
    ``acks_seen`` is its ``failover.proxy.acknowledged`` line. A mark whose
    line is missing (the run failed before it) is left out.
    """
    marks: dict[str, datetime] = {}
    wanted = {
        ("failover.phase.start", "pause"): "pause_started",
        ("failover.phase.done", "pause"): "paused",
        ("failover.phase.start", "resume"): "resume_started",
        ("failover.phase.done", "resume"): "resumed",
    }
    for event in ("failover.phase.start", "failover.phase.done"):
        for record in json_events(lines, event):
            mark = wanted.get((event, str(record.get("phase"))))
            if mark is not None and mark not in marks:
                marks[mark] = _ts(record)
    # Logged once per switchover, the moment the last acknowledgement was read.
    for record in json_events(lines, "failover.proxy.acknowledged")[:1]:
        marks["acks_seen"] = _ts(record)
    return marks


def chain_within(
    chains: Iterable[PromotionChain], started: datetime, ended: datetime
) -> PromotionChain | None:
    """The first chain whose move lies between ``started`` and ``ended`` (aware, UTC).

    Pacemaker's timestamps carry no year and no zone: they take ``started``'s year and
    UTC.
    """
    for chain in chains:
        moved = _aware(chain.moved_at, started)
        if started.timestamp() - _SLACK_S <= moved.timestamp() <= ended.timestamp():
            return chain
    return None


def _aware(stamp: datetime, reference: datetime) -> datetime:
    return stamp.replace(year=reference.year, tzinfo=UTC)


def published_at(lines: Iterable[str], address: str, after: datetime) -> datetime | None:
    """When a supervise first wrote ``address`` to etcd at or after ``after``.

    ``lines`` are the supervise logs of every node (any order): the ``etcd.master.publish``
    line, logged once the compare-and-put succeeded.
    """
    stamps = [
        stamp
        for record in json_events(lines, "etcd.master.publish")
        if record.get("address") == address and (stamp := _ts(record)) >= after
    ]
    return min(stamps, default=None)


def last_ack(acks: Mapping[str, str], address: str) -> datetime | None:
    """The latest ``applied_at`` among proxy acknowledgements of ``address``.

    ``acks`` maps each ``<ns>/proxies/<id>`` key to its JSON record, as read from etcd
    after the run. None when no proxy acknowledged ``address``.
    """
    stamps: list[datetime] = []
    for raw in acks.values():
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("host") == address:
            stamps.append(_ts({"ts": record.get("applied_at")}))
    return max(stamps, default=None)


def record_observed(raw: str | None) -> datetime | None:
    """The ``observed_at`` of supervise's primary record (``<ns><master_key>.json``)."""
    try:
        record = json.loads(raw or "")
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("observed_at"), str):
        return None
    return _ts({"ts": record["observed_at"]})


def segments(marks: Mapping[str, datetime], chain: PromotionChain | None) -> dict[str, float]:
    """Each segment's seconds (see the module's table), plus ``share``.

    ``marks`` holds the failover's marks, ``published`` and ``last_ack`` (and, for the
    :data:`DETAILS`, ``observed``); ``moved`` and ``promoted`` come from ``chain``.

    Raises:
        ShareError: a mark is missing, so the run cannot be broken down.
    """
    every = dict(marks)
    if chain is not None and "pause_started" in every:
        every["moved"] = _aware(chain.moved_at, every["pause_started"])
        every["promoted"] = _aware(chain.promoted_at, every["pause_started"])
    missing = [m for _, start, end in SEGMENTS for m in (start, end) if m not in every]
    if missing:
        raise ShareError(f"missing marks: {', '.join(dict.fromkeys(missing))}")
    out = {
        name: round((every[end] - every[start]).total_seconds(), 3) for name, start, end in SEGMENTS
    }
    out["share"] = round(sum(v for k, v in out.items() if k != "chain"), 3)
    for name, start, end in DETAILS:
        if start in every and end in every:
            out[name] = round((every[end] - every[start]).total_seconds(), 3)
    return out


def summarize(per_run: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Median, p99 (nearest rank: the maximum below 100 runs), min and max per segment."""
    names = [name for name, _, _ in (*SEGMENTS, *DETAILS)] + ["share"]
    out: dict[str, dict[str, float]] = {}
    for name in names:
        values = sorted(run[name] for run in per_run if name in run)
        if not values:
            continue
        rank = min(len(values) - 1, math.ceil(0.99 * len(values)) - 1)
        out[name] = {
            "median": round(statistics.median(values), 3),
            "p99": values[rank],
            "min": values[0],
            "max": values[-1],
        }
    return out
