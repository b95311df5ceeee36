"""pgcm's share of a switchover, split at marks read from each component's log lines."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pgcm_lab import share
from pgcm_lab.chain import promotion_chains

# Every node's pacemaker.log lines of one move from n1 to n2: the constraint is written
# at 01:38:23.737 and PAF's promote succeeds at 01:38:25.833 (Pacemaker's local time,
# UTC in the lab).
MOVE = (Path(__file__).parent / "data" / "pacemaker-move.log").read_text().splitlines()
[CHAIN] = promotion_chains(MOVE)


def _line(event: str, ts: str, **fields: object) -> str:
    return json.dumps({"event": event, "ts": f"2026-11-26T01:38:{ts}Z", **fields})


FAILOVER_LOG = [
    _line("failover.phase.start", "23.000000", phase="pause"),
    _line("failover.phase.done", "23.070000", phase="pause", seconds=0.07),
    _line("failover.phase.start", "23.070500", phase="migrate"),
    _line("failover.phase.done", "23.760000", phase="migrate", seconds=0.69),
    "Traceback-free noise that is not JSON",
    _line("failover.proxy.acknowledged", "26.080000", proxies=["app", "n1"]),
    _line("failover.phase.start", "26.100000", phase="resume"),
    _line("failover.phase.done", "26.130000", phase="resume", seconds=0.03),
]
# The lab's supervisor loop prefixes nothing, journald a priority: both are read.
SUPERVISE_LOG = [
    _line("etcd.master.publish", "20.000000", address="10.0.0.12"),  # an earlier run's
    "<6>" + _line("etcd.master.publish", "25.950000", address="10.0.0.12"),
    _line("etcd.master.publish", "25.990000", address="10.0.0.12"),  # a second writer
    _line("etcd.master.publish", "25.900000", address="10.0.0.11"),  # another address
]
ACKS = {
    "/pgcm/proxies/app": json.dumps(
        {"host": "10.0.0.12", "applied_at": "2026-11-26T01:38:26.050000+00:00"}
    ),
    "/pgcm/proxies/n1": json.dumps(
        {"host": "10.0.0.12", "applied_at": "2026-11-26T01:38:26.020000+00:00"}
    ),
    "/pgcm/proxies/n3": json.dumps(
        {"host": "10.0.0.11", "applied_at": "2026-11-26T01:38:27.000000+00:00"}
    ),
    "/pgcm/proxies/bad": "not json",
}


def _marks() -> dict[str, datetime]:
    marks = share.failover_marks(FAILOVER_LOG)
    published = share.published_at(SUPERVISE_LOG, "10.0.0.12", marks["pause_started"])
    acked = share.last_ack(ACKS, "10.0.0.12")
    assert published is not None
    assert acked is not None
    return {**marks, "published": published, "last_ack": acked}


def test_one_run_splits_into_segments_between_the_logged_marks() -> None:
    chain = share.chain_within([CHAIN], *_window())
    assert share.segments(_marks(), chain) == {
        "pause": 0.07,
        "to_move": 0.667,
        "chain": 2.096,
        "to_etcd": 0.117,
        "to_last_ack": 0.1,
        "to_resume": 0.05,
        "resume": 0.03,
        "share": 1.034,
        "to_resume.ack_put": 0.03,
        "to_resume.wake": 0.02,
    }


def _window() -> tuple[datetime, datetime]:
    marks = share.failover_marks(FAILOVER_LOG)
    return marks["pause_started"], marks["resumed"]


def test_segments_add_up_to_the_paused_time() -> None:
    result = share.segments(_marks(), CHAIN)
    started, ended = _window()
    paused = (ended - started).total_seconds()
    assert result["share"] + result["chain"] == pytest.approx(paused, abs=0.002)


def test_the_first_publication_of_the_target_after_the_pause_counts() -> None:
    after = datetime(2026, 11, 26, 1, 38, 23, tzinfo=UTC)
    assert share.published_at(SUPERVISE_LOG, "10.0.0.12", after) == datetime(
        2026, 11, 26, 1, 38, 25, 950000, tzinfo=UTC
    )
    assert share.published_at(SUPERVISE_LOG, "10.0.0.13", after) is None


def test_only_acks_of_the_target_count() -> None:
    assert share.last_ack(ACKS, "10.0.0.11") == datetime(2026, 11, 26, 1, 38, 27, tzinfo=UTC)
    assert share.last_ack(ACKS, "10.0.0.99") is None


def test_a_chain_outside_the_paused_window_is_not_this_runs() -> None:
    later = datetime(2026, 11, 26, 1, 40, tzinfo=UTC)
    assert share.chain_within([CHAIN], later, later.replace(minute=41)) is None
    assert share.chain_within([CHAIN], *_window()) is CHAIN


def test_a_run_without_a_chain_or_a_publication_cannot_be_broken_down() -> None:
    with pytest.raises(share.ShareError, match="moved, promoted"):
        share.segments(_marks(), None)
    marks = _marks()
    del marks["published"]
    with pytest.raises(share.ShareError, match="published"):
        share.segments(marks, CHAIN)


def test_the_failovers_ack_line_splits_the_wait_for_the_last_ack() -> None:
    result = share.segments(_marks(), CHAIN)
    assert result["to_resume.ack_put"] == 0.03
    assert result["to_resume.wake"] == 0.02
    assert result["to_resume"] == 0.05


def test_a_failed_run_logs_no_resume_mark() -> None:
    assert set(share.failover_marks(FAILOVER_LOG[:2])) == {"pause_started", "paused"}


def test_summary_gives_median_and_p99_per_segment() -> None:
    runs = [{"pause": float(i), "share": 2.0 * i} for i in range(1, 12)]
    summary = share.summarize(runs)
    assert summary["pause"] == {"median": 6.0, "p99": 11.0, "min": 1.0, "max": 11.0}
    assert summary["share"]["median"] == 12.0
    assert "chain" not in summary


def test_the_records_read_time_splits_the_publication() -> None:
    record = json.dumps({"node": "n2", "observed_at": "2026-11-26T01:38:25.900000+00:00"})
    observed = share.record_observed(record)
    assert observed is not None
    result = share.segments({**_marks(), "observed": observed}, CHAIN)
    assert (result["to_etcd.before_read"], result["to_etcd.read_and_put"]) == (0.067, 0.05)
    assert result["share"] == 1.034  # the details are not counted twice
    assert share.record_observed("not json") is None
    assert share.record_observed(None) is None
