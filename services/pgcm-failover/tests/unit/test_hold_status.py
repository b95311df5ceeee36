"""``status`` shows a hold in force (the primary lost, proxies holding clients)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from pgcm_common.records import HoldRecord, KeyLayout
from pgcm_failover.app import Adapters, collect_status
from pgcm_failover.report import dumps, render_status, status_to_dict
from pgcm_failover.settings import FailoverSettings
from pgcm_testkit.fakes.etcd import FakeEtcdStore

LAYOUT = KeyLayout("/pg", "/master")
SINCE = datetime(2026, 12, 7, 4, 40, 12, tzinfo=UTC)
SETTINGS = FailoverSettings(endpoints=["s1:1"], cluster={"namespace": "/pg"})


async def test_a_hold_in_force_is_shown_in_text_and_json() -> None:
    store = FakeEtcdStore()
    hold = HoldRecord(
        lost_node="n1",
        lost_address="10.0.0.11",
        reason="node n1 is offline",
        since=SINCE,
        deadline=SINCE + timedelta(seconds=30),
        writer="n2",
    )
    await store.put(LAYOUT.hold, hold.to_json())
    status = await collect_status(Adapters(store, []), SETTINGS)
    assert (
        "hold: proxies routed to 10.0.0.11 hold new transactions since "
        "2026-12-07T04:40:12+00:00 (primary n1 lost: node n1 is offline; at most until "
        "2026-12-07T04:40:42+00:00)"
    ) in render_status(status)
    data = json.loads(dumps(status_to_dict(status)))
    assert data["hold"] == {
        "lost_node": "n1",
        "lost_address": "10.0.0.11",
        "reason": "node n1 is offline",
        "since": "2026-12-07T04:40:12+00:00",
        "deadline": "2026-12-07T04:40:42+00:00",
        "writer": "n2",
    }


async def test_no_hold_no_line_and_a_malformed_one_is_a_problem() -> None:
    store = FakeEtcdStore()
    status = await collect_status(Adapters(store, []), SETTINGS)
    assert "hold:" not in render_status(status)
    assert status_to_dict(status)["hold"] is None
    await store.put(LAYOUT.hold, b"{not json")
    status = await collect_status(Adapters(store, []), SETTINGS)
    assert any("/pg/hold" in problem for problem in status.problems)
