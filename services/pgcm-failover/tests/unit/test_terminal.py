from __future__ import annotations

import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgcm_common.records import NodeRole, ProxyAck, now_utc
from pgcm_failover.pipeline import MigrationTarget, Phase, Report
from pgcm_failover.report import (
    Plan,
    ProgressDisplay,
    ProxyRow,
    Status,
    dumps,
    render_plan,
    render_report,
    render_status,
    status_to_dict,
)
from pgcm_failover.terminal import printable

# What a terminal acts on instead of printing: ESC (CSI, OSC), BEL, CR (overwrites the
# line), BS, DEL, the 8-bit CSI, and the bidi override that reverses what follows.
HOSTILE = "\x1b]0;owned\x07\x1b[2J\r\x08\x7f\x9b31m\u202en1\u2066"


def _only_newlines_control(text: str) -> bool:
    return all(c.isprintable() or c == "\n" for c in text)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("n1", "n1"),
        ("10.0.0.1:6432 ✓ …", "10.0.0.1:6432 ✓ …"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("a\nb\rc\td", "a\\x0ab\\x0dc\\x09d"),
        ("\x7f\x9b\x85", "\\x7f\\x9b\\x85"),
        ("\u202eevil\u202c", "\\u202eevil\\u202c"),
        ("\u2066x\u2069\u200f", "\\u2066x\\u2069\\u200f"),
        ("\U000e0001tag", "\\U000e0001tag"),
    ],
)
def test_printable_escapes_what_a_terminal_would_act_on(raw: str, shown: str) -> None:
    assert printable(raw) == shown


@given(st.text())
def test_printable_leaves_nothing_unprintable_and_is_idempotent(text: str) -> None:
    once = printable(text)
    assert once.isprintable()
    assert printable(once) == once


def hostile_status() -> Status:
    ack = ProxyAck(proxy_id=HOSTILE, host=HOSTILE, revision=7, applied_at=now_utc())
    return Status(
        nodes=(NodeRole(name=HOSTILE, online=True, role="Promoted", promotion_score=1),),
        quorum={HOSTILE: True},
        view_from=HOSTILE,
        dc=HOSTILE,
        etcd_primary=HOSTILE,
        primary_record_node=HOSTILE,
        primary_observed_at=None,
        primary_age_s=None,
        proxies=(ProxyRow(HOSTILE, ack),),
        pgbouncer_paused={HOSTILE: False},
        lock_holder=HOSTILE,
        lock_token=3,
        move_constraints=(HOSTILE,),
        stale=(HOSTILE,),
        problems=(HOSTILE,),
    )


def test_status_table_escapes_hostile_values_from_etcd() -> None:
    text = render_status(hostile_status())
    assert _only_newlines_control(text)
    assert "\\x1b]0;owned\\x07" in text
    assert "\\u202en1" in text


def test_status_json_keeps_hostile_values_exact() -> None:
    data = json.loads(dumps(status_to_dict(hostile_status())))
    assert data["proxies"][0]["proxy_id"] == HOSTILE
    assert data["proxies"][0]["ack"]["host"] == HOSTILE
    assert data["etcd_primary"]["address"] == HOSTILE


def test_plan_and_report_escape_hostile_values() -> None:
    ack = ProxyAck(proxy_id=HOSTILE, host=HOSTILE, revision=1, applied_at=now_utc())
    plan = Plan(
        endpoints=(),
        old_primary=HOSTILE,
        target=HOSTILE,
        reason=HOSTILE,
        refused=HOSTILE,
        proxies=(ProxyRow(HOSTILE, ack),),
        replication=((HOSTILE, HOSTILE, 1),),
        oldest_transaction_age_s=None,
        notes=(HOSTILE,),
    )
    report = Report(
        phases=[Phase("migrate", 0.0, 1.0, detail=HOSTILE)],
        target=MigrationTarget(HOSTILE, HOSTILE),
        old_primary=HOSTILE,
        proxies_acknowledged=[HOSTILE],
        needs_human=[HOSTILE],
        notes=[HOSTILE],
        error=HOSTILE,
    )
    for text in (
        render_plan(plan),
        render_plan(plan, dry_run=False),
        render_report(report, outcome="x"),
    ):
        assert _only_newlines_control(text)
        assert "\\x1b[2J" in text


def test_progress_display_escapes_a_peers_error_but_keeps_its_own_sequences() -> None:
    stream = io.StringIO()
    ProgressDisplay(stream)(Phase("pause", 1.0, 2.0, ok=False, detail=HOSTILE))
    shown = stream.getvalue()
    assert shown.startswith("\r\x1b[K✗ pause (1.000s): \\x1b]0;owned")
    assert _only_newlines_control(shown.removeprefix("\r\x1b[K"))
