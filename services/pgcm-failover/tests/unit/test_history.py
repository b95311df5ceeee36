"""``history``: each switchover's record in etcd, bounded, shown newest first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pgcm_common.records import KeyLayout, PhaseRecord, SwitchoverRecord
from pgcm_failover.history import read_history, write_history
from pgcm_failover.report import render_history
from pgcm_testkit.fakes.etcd import FakeEtcdStore

LAYOUT = KeyLayout("/pg", "/master")
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def record(minute: int, **changes: object) -> SwitchoverRecord:
    base = SwitchoverRecord(
        started_at=T0 + timedelta(minutes=minute),
        finished_at=T0 + timedelta(minutes=minute, seconds=4),
        outcome="succeeded",
        by="alice@ops1",
        pid=100 + minute,
        old_primary="n1",
        target="n2",
        target_address="10.0.0.12",
        paused_s=3.5,
        total_s=4.0,
        phases=(PhaseRecord(name="migrate", ok=True, seconds=3.25),),
    )
    return base.model_copy(update=changes)


async def test_writes_are_trimmed_to_the_newest_n() -> None:
    store = FakeEtcdStore()
    deleted = [await write_history(store, LAYOUT, record(m), keep=3) for m in range(5)]
    assert deleted == [0, 0, 0, 1, 1]
    kept, invalid = await read_history(store, LAYOUT, limit=10)
    assert [r.pid for r in kept] == [104, 103, 102]  # newest first
    assert invalid == []


async def test_read_reports_unreadable_records_and_honours_the_limit() -> None:
    store = FakeEtcdStore()
    for m in range(3):
        await write_history(store, LAYOUT, record(m), keep=10)
    await store.put(LAYOUT.history_prefix + b"99999999T000000.000000Z-1", b"not json")
    kept, invalid = await read_history(store, LAYOUT, limit=2)
    assert [r.pid for r in kept] == [102, 101]
    assert invalid == ["/pg/history/99999999T000000.000000Z-1"]


def test_table_shows_who_from_to_result_pause_and_phase_timings() -> None:
    failed = record(1, outcome="rolled_back", error="exceeded pause timeout", target=None)
    text = render_history([failed, record(0)], [])
    lines = text.splitlines()
    assert lines[0].split() == [
        "started",
        "(UTC)",
        "took",
        "by",
        "from",
        "->",
        "to",
        "result",
        "paused",
    ]
    assert lines[1].split() == [
        "2026-03-01T12:01:00+00:00",
        "4.000s",
        "alice@ops1",
        "n1",
        "->",
        "-",
        "rolled_back",
        "3.500s",
    ]
    assert lines[2] == "    phases: migrate 3.250s"
    assert lines[3] == "    error: exceeded pause timeout"
    assert "n1 -> n2" in lines[4]


def test_table_escapes_hostile_values() -> None:
    text = render_history([record(0, by="\x1b]0;x\x07me", error="\x1b[2J")], [])
    assert "\x1b" not in text
    assert "\\x1b]0;x\\x07me" in text
