from __future__ import annotations

import io
import json
import re

from pgcm_failover.pipeline import MigrationTarget, Phase, Report
from pgcm_failover.report import ProgressDisplay, dumps, render_report, report_to_dict


def finished_report() -> Report:
    return Report(
        phases=[
            Phase("health_check", 0.0, 0.05, ok=True),
            Phase("pause", 0.1, 0.2, ok=True),
            Phase("migrate", 0.2, 1.9, ok=False, detail="migrate failed on 1 endpoint(s)"),
        ],
        target=MigrationTarget("n2", "10.0.0.12"),
        old_primary="n1",
        proxies_acknowledged=["app1"],
        paused_at=0.1,
        resumed_at=2.6,
        needs_human=["unmigrate failed: crm_resource exited 1"],
        notes=["no PostgreSQL facts published by n1"],
        error="migrate failed",
    )


def test_table_report_shows_timings_pause_targets_and_what_needs_a_human() -> None:
    text = render_report(finished_report(), outcome="needs_human")
    assert text.startswith("Switchover FAILED: a human is needed\n")
    assert "old primary:  n1" in text
    assert "new primary:  n2 (10.0.0.12)" in text
    assert "paused for:   2.500s" in text
    assert "total:        1.900s" in text
    assert "proxies acknowledged: app1" in text
    assert re.search(r"^migrate +FAILED +1\.700s +migrate failed on 1 endpoint", text, re.MULTILINE)
    assert "NEEDS A HUMAN: unmigrate failed: crm_resource exited 1" in text
    assert "note: no PostgreSQL facts published by n1" in text


def test_json_report_round_trips_with_every_field() -> None:
    data = json.loads(dumps(report_to_dict(finished_report(), outcome="needs_human")))
    assert data["target"] == {"node": "n2", "address": "10.0.0.12"}
    assert data["paused_seconds"] == 2.5
    assert [p["ok"] for p in data["phases"]] == [True, True, False]
    assert data["needs_human"] == ["unmigrate failed: crm_resource exited 1"]


def test_progress_rewrites_the_running_line_and_ends_finished_ones() -> None:
    stream = io.StringIO()
    show = ProgressDisplay(stream)
    phase = Phase("pause", 1.0)
    show(phase)
    phase.finished, phase.ok = 1.25, True
    show(phase)
    assert stream.getvalue() == "\r\x1b[K… pause\r\x1b[K✓ pause (0.250s)\n"
