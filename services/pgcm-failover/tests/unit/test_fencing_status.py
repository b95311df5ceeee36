"""Failed or blocked instances and fencing: ``status`` shows them and what to do, a
switchover refuses while they last."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from pgcm_common.records import (
    FencingRecord,
    InstanceTrouble,
    KeyLayout,
    NodeRole,
    NodeStatus,
    now_utc,
)
from pgcm_failover.advice import (
    PacemakerAttention,
    pacemaker_attention,
    unresolved_failed_fencing,
    what_to_do,
)
from pgcm_failover.app import Adapters, collect_status
from pgcm_failover.cluster import NodeStatusCluster
from pgcm_failover.errors import FailoverAborted
from pgcm_failover.report import dumps, render_status, status_to_dict
from pgcm_failover.settings import FailoverSettings
from pgcm_testkit.fakes.etcd import FakeEtcdStore

LAYOUT = KeyLayout("/pg", "/master")
NODES = (
    NodeRole(name="n1", online=True, role="Promoted", promotion_score=1001),
    NodeRole(name="n2", online=True, role="Unpromoted", promotion_score=1000),
    NodeRole(name="n3", online=True, role="Unpromoted", promotion_score=990),
)
BLOCKED = InstanceTrouble(
    resource="pgsqld", node="n1", role="Promoted", failed=True, blocked=True, managed=False
)
FAILED = InstanceTrouble(
    resource="pgsqld", node="n3", role="Unpromoted", failed=True, blocked=False
)
PENDING = FencingRecord(
    target="n1", action="reboot", state="pending", origin="n2", client="pacemaker-controld.1"
)
DONE = FencingRecord(
    target="n3",
    action="off",
    state="success",
    origin="n2",
    delegate="n1",
    completed="2026-12-07 04:40:12 +00:00",
)
OLD_FAILURE = FencingRecord(
    target="n3", action="off", state="failed", origin="n2", completed="2026-12-07 04:39:00 +00:00"
)
NEW_FAILURE = FencingRecord(
    target="n2", action="off", state="failed", origin="n1", reason="timeout"
)


def record(
    node: str,
    *,
    troubled: tuple[InstanceTrouble, ...] = (),
    fencing: tuple[FencingRecord, ...] = (),
    quorum: bool = True,
) -> bytes:
    return NodeStatus(
        node=node,
        address=f"10.0.0.1{node[-1]}",
        observed_at=now_utc(),
        with_quorum=quorum,
        dc="n2",
        primary="n1",
        nodes=NODES,
        pgbouncer_paused=False,
        troubled_instances=troubled,
        fencing=fencing,
    ).to_json()


def cluster(store: FakeEtcdStore) -> NodeStatusCluster:
    return NodeStatusCluster(
        store,
        LAYOUT,
        max_age=timedelta(seconds=10),
        poll_interval=timedelta(milliseconds=10),
        max_lag_bytes=1000,
    )


@pytest.mark.parametrize(
    ("troubled", "fencing", "reason"),
    [
        ((BLOCKED,), (), r"instance pgsqld \(Promoted\) on n1: failed, blocked, unmanaged"),
        ((FAILED,), (), r"instance pgsqld \(Unpromoted\) on n3: failed"),
        ((), (PENDING,), r"fencing reboot of n1 pending; requested by n2"),
    ],
)
async def test_switchover_refuses_while_an_instance_is_in_trouble_or_fencing_is_pending(
    troubled: tuple[InstanceTrouble, ...], fencing: tuple[FencingRecord, ...], reason: str
) -> None:
    store = FakeEtcdStore()
    # Only one of the fresh records shows it (its writer saw it first): enough to refuse.
    await store.put(LAYOUT.node_status("n1"), record("n1"))
    await store.put(LAYOUT.node_status("n2"), record("n2", troubled=troubled, fencing=fencing))
    with pytest.raises(FailoverAborted, match="Pacemaker needs a human first: .*" + reason):
        await cluster(store).preflight("n2", max_transaction_age=timedelta(seconds=2))


async def test_completed_or_resolved_fencing_does_not_refuse_a_switchover() -> None:
    store = FakeEtcdStore()
    await store.put(LAYOUT.node_status("n1"), record("n1", fencing=(DONE, OLD_FAILURE)))
    result = await cluster(store).preflight("n2", max_transaction_age=timedelta(seconds=2))
    assert (result.old_primary, result.target) == ("n1", "n2")


def test_a_failure_is_resolved_only_by_a_later_success_on_the_same_node() -> None:
    assert unresolved_failed_fencing((DONE, OLD_FAILURE, NEW_FAILURE)) == (NEW_FAILURE,)
    assert unresolved_failed_fencing((OLD_FAILURE, DONE)) == (OLD_FAILURE,)


def test_nothing_to_do_when_nothing_is_wrong() -> None:
    assert what_to_do(PacemakerAttention(fencing=(DONE,))) == ()


def test_what_to_do_names_the_commands_for_each_kind_of_trouble() -> None:
    attention = PacemakerAttention(
        instances=(BLOCKED, FAILED),
        fencing=(PENDING, NEW_FAILURE),
        fencing_from="n2",
        fencing_unknown=None,
    )
    blocked, failed, pending, failed_fencing = what_to_do(attention)
    assert "pgsqld on n1 is blocked" in blocked
    assert "crm_resource --cleanup --resource pgsqld --node n1" in blocked
    assert "stonith_admin --confirm n1" in blocked
    assert "Pacemaker is recovering it" in failed
    assert "crm_resource --cleanup --resource pgsqld --node n3" in failed
    assert "Pacemaker is fencing n1 (reboot): wait" in pending
    assert "Only when n1 is powered off for certain: stonith_admin --confirm n1" in pending
    assert "Fencing of n2 failed" in failed_fencing
    assert "stonith_admin --cleanup --history n2" in failed_fencing


def test_without_a_quorate_view_the_freshest_record_tells_of_fencing() -> None:
    older = NodeStatus.from_json("k", record("n1", quorum=False))
    newer = NodeStatus.from_json("k", record("n3", quorum=False, fencing=(PENDING,)))
    attention = pacemaker_attention(None, (older, newer))
    assert (attention.fencing, attention.fencing_from) == ((PENDING,), "n3")
    assert pacemaker_attention(None, ()) == PacemakerAttention()


async def test_status_shows_instances_fencing_and_what_to_do_in_text_and_json() -> None:
    store = FakeEtcdStore()
    await store.put(
        LAYOUT.node_status("n2"),
        record("n2", troubled=(BLOCKED,), fencing=(PENDING, DONE, OLD_FAILURE)),
    )
    settings = FailoverSettings(endpoints=["s1:1"], cluster={"namespace": "/pg"})
    status = await collect_status(Adapters(store, []), settings)
    text = render_status(status)
    assert "BLOCKED instance: pgsqld (Promoted) on n1: failed, blocked, unmanaged" in text
    assert "fencing (as n2 sees it, newest first):" in text
    assert "  PENDING: reboot of n1 pending; requested by n2" in text
    assert "  success: off of n3 success at 2026-12-07 04:40:12 +00:00; requested by n2" in text
    assert "what to do:" in text
    data = json.loads(dumps(status_to_dict(status)))
    assert data["troubled_instances"] == [
        {
            "resource": "pgsqld",
            "node": "n1",
            "role": "Promoted",
            "failed": True,
            "blocked": True,
            "managed": False,
        }
    ]
    assert [f["state"] for f in data["fencing"]] == ["pending", "success", "failed"]
    assert data["fencing_from"] == "n2"
    # The old failure was followed by a success: no step for it.
    assert len(data["what_to_do"]) == 2
    assert data["what_to_do"] == list(what_to_do(status.attention))


async def test_a_healthy_status_has_no_fencing_lines() -> None:
    store = FakeEtcdStore()
    await store.put(LAYOUT.node_status("n1"), record("n1"))
    settings = FailoverSettings(endpoints=["s1:1"], cluster={"namespace": "/pg"})
    status = await collect_status(Adapters(store, []), settings)
    text = render_status(status)
    assert "fencing" not in text
    assert "what to do" not in text
    data = status_to_dict(status)
    assert (data["troubled_instances"], data["fencing"], data["what_to_do"]) == ([], [], [])


def test_a_failed_instance_on_a_node_being_fenced_waits_for_the_fencing() -> None:
    on_fenced_node = FAILED.model_copy(update={"node": "n1"})
    first, _ = what_to_do(PacemakerAttention(instances=(on_fenced_node,), fencing=(PENDING,)))
    assert first == (
        "pgsqld on n1 failed and n1 is being fenced: Pacemaker recovers the resource on "
        "another node once the fencing completes."
    )
