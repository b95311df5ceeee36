from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from pgcm_common.pacemaker import ClusterState, Role, parse_crm_mon
from pgcm_common.records import (
    KeyLayout,
    MaintenanceRecord,
    NodeRole,
    NodeStatus,
    PostgresStatus,
    ReplicationPeer,
    now_utc,
)
from pgcm_failover.cluster import (
    LEGACY_PGSQL_AGENT,
    ClusterSnapshot,
    NodeStatusCluster,
    read_snapshot,
    settle_problems,
)
from pgcm_failover.errors import FailoverAborted
from pgcm_testkit.fakes.etcd import FakeEtcdStore

LAYOUT = KeyLayout("/pg", "/master")
HEALTHY = (
    NodeRole(name="n1", online=True, role="Promoted", promotion_score=1001),
    NodeRole(name="n2", online=True, role="Unpromoted", promotion_score=1000),
    NodeRole(name="n3", online=True, role="Unpromoted", promotion_score=990),
)


def status(
    node: str,
    *,
    nodes: tuple[NodeRole, ...] = HEALTHY,
    primary: str | None = "n1",
    age_s: float = 0.0,
    quorum: bool = True,
    constraints: tuple[str, ...] = (),
    postgres: PostgresStatus | None = None,
) -> bytes:
    return NodeStatus(
        node=node,
        address=f"10.0.0.1{node[-1]}",
        observed_at=now_utc() - timedelta(seconds=age_s),
        with_quorum=quorum,
        dc="n1",
        primary=primary,
        nodes=nodes,
        move_constraints=constraints,
        pgbouncer_paused=False,
        postgres=postgres,
    ).to_json()


def pg(*peers: tuple[str, str, int], oldest: float | None = 0.5) -> PostgresStatus:
    return PostgresStatus(
        in_recovery=False,
        replication=tuple(
            ReplicationPeer(application_name=n, state=s, sync_state="sync", lag_bytes=lag)
            for n, s, lag in peers
        ),
        oldest_transaction_age_s=oldest,
    )


def cluster(store: FakeEtcdStore) -> NodeStatusCluster:
    return NodeStatusCluster(
        store,
        LAYOUT,
        max_age=timedelta(seconds=10),
        poll_interval=timedelta(milliseconds=10),
        max_lag_bytes=1000,
    )


async def preflight(store: FakeEtcdStore, target: str | None = None) -> object:
    return await cluster(store).preflight(target, max_transaction_age=timedelta(seconds=2))


async def test_cluster_choice_is_the_online_standby_with_the_highest_score() -> None:
    store = FakeEtcdStore()
    for node in ("n1", "n2", "n3"):
        await store.put(LAYOUT.node_status(node), status(node))
    result = await cluster(store).preflight(None, max_transaction_age=timedelta(seconds=2))
    assert (result.old_primary, result.target) == ("n1", "n2")
    assert "highest promotion score (1000)" in result.reason
    assert any("no PostgreSQL facts" in note for note in result.notes)


async def test_stale_and_malformed_records_are_ignored() -> None:
    store = FakeEtcdStore()
    await store.put(LAYOUT.node_status("n1"), status("n1", age_s=60))
    await store.put(LAYOUT.node_status("n2"), b"{}")
    snapshot = await read_snapshot(store, LAYOUT, max_age=timedelta(seconds=10))
    assert snapshot.statuses == {}
    assert snapshot.stale == ("n1",)
    with pytest.raises(FailoverAborted, match="no NodeStatus newer than 10s"):
        await preflight(store)


@pytest.mark.parametrize(
    ("records", "target", "reason"),
    [
        ({"n1": {"quorum": False}}, None, "no quorum as seen from n1"),
        ({"n1": {"primary": None}}, None, "no single promoted primary"),
        ({"n1": {"constraints": ("cli-prefer-pgsql-ha",)}}, None, "leftover move constraint"),
        ({"n1": {}}, "n9", "n9 is not a cluster node"),
        ({"n1": {}}, "n1", "already the primary"),
        (
            {"n1": {"nodes": (HEALTHY[0], HEALTHY[1].model_copy(update={"online": False}))}},
            "n2",
            "n2 is offline",
        ),
        (
            {
                "n1": {
                    "nodes": (HEALTHY[0], HEALTHY[1].model_copy(update={"promotion_score": -1000}))
                }
            },
            None,
            "negative promotion score",
        ),
        ({"n1": {"postgres": pg(("n3", "streaming", 0))}}, "n2", "n2 is not replicating"),
        ({"n1": {"postgres": pg(("n2", "catchup", 0))}}, "n2", "not streaming"),
        ({"n1": {"postgres": pg(("n2", "streaming", 5000))}}, "n2", "5000 bytes behind"),
        (
            {"n1": {"postgres": pg(("n2", "streaming", 0), oldest=7.5)}},
            "n2",
            "open 7.5s, longer than the pause timeout 2s",
        ),
    ],
)
async def test_preflight_refuses_with_a_precise_reason(
    records: dict[str, dict[str, object]], target: str | None, reason: str
) -> None:
    store = FakeEtcdStore()
    for node, overrides in records.items():
        await store.put(LAYOUT.node_status(node), status(node, **overrides))  # type: ignore[arg-type]
    with pytest.raises(FailoverAborted, match=reason):
        await preflight(store, target)


async def test_preflight_with_postgres_facts_reports_the_lag() -> None:
    store = FakeEtcdStore()
    await store.put(LAYOUT.node_status("n1"), status("n1", postgres=pg(("n2", "streaming", 42))))
    result = await cluster(store).preflight("n2", max_transaction_age=timedelta(seconds=2))
    assert (result.target, result.lag_bytes, result.notes) == ("n2", 42, ())


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (
            MaintenanceRecord(enabled=True, reason="disk swap", by="ops", at=now_utc()).to_json(),
            "maintenance mode",
        ),
        (b"not json", "unreadable record"),
    ],
)
async def test_preflight_refuses_while_maintenance_is_on_or_unreadable(
    record: bytes, reason: str
) -> None:
    # Read with the lock held: the check before the lock may not have reached etcd.
    store = FakeEtcdStore()
    await store.put(LAYOUT.node_status("n1"), status("n1", postgres=pg(("n2", "streaming", 0))))
    await store.put(LAYOUT.maintenance, record)
    with pytest.raises(FailoverAborted, match=reason):
        await cluster(store).preflight("n2", max_transaction_age=timedelta(seconds=2))


def roles(*spec: tuple[str, str, int]) -> tuple[NodeRole, ...]:
    return tuple(NodeRole(name=n, online=True, role=r, promotion_score=s) for n, r, s in spec)


@pytest.mark.parametrize(
    ("nodes", "settled"),
    [
        (roles(("n1", "Unpromoted", 1000), ("n2", "Promoted", 1001), ("n3", "Slave", 990)), True),
        (roles(("n1", "Unpromoted", 1001), ("n2", "Promoted", 1000)), False),  # old top score
        (roles(("n1", "Unpromoted", 1001), ("n2", "Master", 1001)), False),  # shared top score
        (roles(("n1", "Promoted", 1001), ("n2", "Promoted", 1001)), False),
        (roles(("n1", "Unpromoted", -1000), ("n2", "Promoted", 1001)), False),
        (roles(("n1", "Stopped", -1000), ("n2", "Promoted", 5)), True),  # max, not 1001
    ],
)
async def test_safe_clear_rule(nodes: tuple[NodeRole, ...], settled: bool) -> None:  # noqa: FBT001
    store = FakeEtcdStore()
    await store.put(LAYOUT.node_status("n2"), status("n2", nodes=nodes, primary="n2"))
    snapshot = await read_snapshot(store, LAYOUT, max_age=timedelta(seconds=10))
    assert (settle_problems(snapshot, "n2") == []) is settled


async def test_wait_settled_returns_once_scores_settle() -> None:
    store = FakeEtcdStore()
    early = roles(("n1", "Unpromoted", 1001), ("n2", "Promoted", 1000))
    late = roles(("n1", "Unpromoted", 1000), ("n2", "Promoted", 1001))
    await store.put(LAYOUT.node_status("n2"), status("n2", nodes=early, primary="n2"))
    async with anyio.create_task_group() as tg:
        done = anyio.Event()

        async def wait() -> None:
            await cluster(store).wait_settled("n2")
            done.set()

        tg.start_soon(wait)
        with anyio.move_on_after(0.1):
            await done.wait()
        assert not done.is_set()
        await store.put(LAYOUT.node_status("n2"), status("n2", nodes=late, primary="n2"))
        with anyio.fail_after(5):
            await done.wait()


FIXTURES = Path(__file__).parents[4] / "libs" / "pgcm-common" / "tests" / "fixtures" / "pacemaker"


def legacy_view(name: str, *, publish_agent: bool) -> ClusterSnapshot:
    """Build the NodeStatus of a crm_mon fixture the way pgcm-supervise publishes it."""
    state: ClusterState = parse_crm_mon((FIXTURES / name).read_bytes(), resource_id="pgsql")
    nodes = []
    for n in state.nodes:
        roles = [i.role for i in state.instances if i.node == n.name]
        legacy = state.legacy_pgsql_of(n.name)
        nodes.append(
            NodeRole(
                name=n.name,
                online=n.online,
                role=(roles[0] if roles else Role.STOPPED).value,
                promotion_score=state.promotion_score(n.name),
                data_status=None if legacy is None else legacy.data_status_raw,
            )
        )
    view = NodeStatus(
        node="n3",
        address="10.0.0.13",
        observed_at=now_utc(),
        with_quorum=state.with_quorum,
        dc=state.dc,
        primary=state.primary_node,
        nodes=tuple(nodes),
        resource_agent=LEGACY_PGSQL_AGENT if publish_agent else None,
    )
    return ClusterSnapshot(statuses={"n3": view}, view=view)


@pytest.mark.parametrize("publish_agent", [True, False])
@pytest.mark.parametrize(
    ("fixture", "target", "settled"),
    [
        ("11-stock-pgsql-ra-after-switchover-n2.xml", "n2", True),  # old primary -INFINITY
        ("11-stock-pgsql-ra-after-switchover-n2.xml", "n1", False),
        ("10-stock-pgsql-ra-healthy-n1.xml", "n1", True),  # async standby -INFINITY
        ("10-stock-pgsql-ra-healthy-n1.xml", "n2", False),
    ],
)
def test_legacy_pgsql_agent_settles_on_data_status_not_negative_scores(
    fixture: str,
    target: str,
    settled: bool,  # noqa: FBT001
    publish_agent: bool,  # noqa: FBT001
) -> None:
    problems = settle_problems(legacy_view(fixture, publish_agent=publish_agent), target)
    assert (problems == []) is settled, problems


def test_legacy_pgsql_agent_waits_while_another_node_is_still_latest() -> None:
    snapshot = legacy_view("11-stock-pgsql-ra-after-switchover-n2.xml", publish_agent=True)
    assert snapshot.view is not None
    nodes = tuple(
        n.model_copy(update={"data_status": "LATEST"}) if n.name == "n1" else n
        for n in snapshot.view.nodes
    )
    view = snapshot.view.model_copy(update={"nodes": nodes})
    problems = settle_problems(ClusterSnapshot(statuses={"n3": view}, view=view), "n2")
    assert problems == ["other node(s) with data-status LATEST: n1"]


def test_paf_keeps_the_negative_standby_rule() -> None:
    nodes = (
        NodeRole(name="n1", online=True, role="Unpromoted", promotion_score=-1000),
        NodeRole(name="n2", online=True, role="Promoted", promotion_score=1001),
    )
    view = NodeStatus(
        node="n2",
        address=None,
        observed_at=now_utc(),
        with_quorum=True,
        dc="n1",
        primary="n2",
        nodes=nodes,
        resource_agent="ocf:heartbeat:pgsqlms",
    )
    problems = settle_problems(ClusterSnapshot(statuses={"n2": view}, view=view), "n2")
    assert problems == ["standby with a negative promotion score: n1"]
