"""Failed or blocked instances and fencing: the node status, the metrics, the health check."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from pgcm_common.pacemaker import ClusterState, parse_crm_mon
from pgcm_common.records import FencingRecord, InstanceTrouble, NodeStatus
from pgcm_supervise.metrics import SuperviseMetrics
from pgcm_supervise.publisher import Observation
from pgcm_supervise.status import build_node_status

FIXTURES = Path(__file__).parents[4] / "libs" / "pgcm-common" / "tests" / "fixtures" / "pacemaker"
HEALTHY = (FIXTURES / "01-healthy-n1-primary.xml").read_text()
T0 = datetime(2026, 12, 7, 4, 40, tzinfo=UTC)
_PROMOTED_OK = (
    'role="Promoted" active="true" orphaned="false" blocked="false" managed="true" failed="false"'
)
_PROMOTED_BLOCKED = (
    'role="Promoted" active="true" orphaned="false" blocked="true" managed="false" failed="true"'
)
FENCING = (
    "<fence_history>"
    '<fence_event status="pending" action="off" target="n3" client="pacemaker-controld.9" '
    'origin="n2"/>'
    '<fence_event status="failed" action="reboot" target="n1" client="stonith_admin.7" '
    'origin="n2" delegate="n3" completed="2026-12-07 04:39:00 +00:00" '
    'exit-reason="no route" extended-status="Error occurred"/>'
    "</fence_history>"
)


def troubled_state() -> ClusterState:
    """n1's promoted instance failed and blocked, n3 being fenced, a failed fencing of n1."""
    xml = HEALTHY.replace(_PROMOTED_OK, _PROMOTED_BLOCKED).replace(
        "</pacemaker-result>", FENCING + "</pacemaker-result>"
    )
    return parse_crm_mon(xml, resource_id="pgsqld")


def status_of(state: ClusterState) -> NodeStatus:
    return build_node_status(
        Observation(state, None, T0), node="n2", address=None, pgbouncer_paused=None, postgres=None
    )


def test_node_status_carries_troubled_instances_and_the_fencing_history() -> None:
    status = status_of(troubled_state())
    assert status.troubled_instances == (
        InstanceTrouble(
            resource="pgsqld", node="n1", role="Promoted", failed=True, blocked=True, managed=False
        ),
    )
    assert status.fencing == (
        FencingRecord(
            target="n3", action="off", state="pending", origin="n2", client="pacemaker-controld.9"
        ),
        FencingRecord(
            target="n1",
            action="reboot",
            state="failed",
            origin="n2",
            client="stonith_admin.7",
            delegate="n3",
            completed="2026-12-07 04:39:00 +00:00",
            reason="Error occurred no route",
        ),
    )
    assert status.fencing_unknown is None
    # Older readers ignore the new fields; the record still reads back whole.
    assert NodeStatus.from_json("k", status.to_json()) == status


def test_a_healthy_cluster_publishes_no_trouble() -> None:
    status = status_of(parse_crm_mon(HEALTHY, resource_id="pgsqld"))
    assert (status.troubled_instances, status.fencing, status.fencing_unknown) == ((), (), None)


def test_an_unreadable_fencing_history_is_published_as_such() -> None:
    xml = HEALTHY.replace(
        "</pacemaker-result>", '<fence_history status="-107"/></pacemaker-result>'
    )
    status = status_of(parse_crm_mon(xml, resource_id="pgsqld"))
    assert status.fencing_unknown == "crm_mon could not read the fencing history (status -107)"


def test_gauges_count_blocked_and_failed_instances_and_pending_and_failed_fencing() -> None:
    metrics = SuperviseMetrics()
    assert metrics.registry is not None
    sample = metrics.registry.get_sample_value
    names = (
        "pgcm_supervise_pacemaker_blocked_instances",
        "pgcm_supervise_pacemaker_failed_instances",
        "pgcm_supervise_pacemaker_fencing_pending",
        "pgcm_supervise_pacemaker_fencing_failed",
    )
    # Before the first successful read: no series (a rule cannot mistake it for 0).
    assert [sample(name) for name in names] == [None, None, None, None]
    metrics.observe_pacemaker(troubled_state())
    assert [sample(name) for name in names] == [1, 1, 1, 1]
    metrics.observe_pacemaker(parse_crm_mon(HEALTHY, resource_id="pgsqld"))
    assert [sample(name) for name in names] == [0, 0, 0, 0]


def test_unexported_gauges_accept_an_observation() -> None:
    metrics = SuperviseMetrics(export=False)
    metrics.observe_pacemaker(troubled_state())
    assert metrics.exposition() == b""


def test_real_blocked_primary_is_published_as_such() -> None:
    state = parse_crm_mon(
        (FIXTURES / "42-blocked-n2-stonith-disabled.xml").read_bytes(), resource_id="pgsqld"
    )
    status = status_of(state)
    assert [t.describe() for t in status.troubled_instances] == [
        "pgsqld (Promoted) on n2: failed, blocked, unmanaged"
    ]
    assert [(f.target, f.state, f.completed) for f in status.fencing] == [
        ("n1", "success", "2026-12-07 04:45:42Z")
    ]


def test_real_pending_fencing_is_published_and_counted() -> None:
    state = parse_crm_mon(
        (FIXTURES / "40-fencing-pending-n1-postgres-hung.xml").read_bytes(), resource_id="pgsqld"
    )
    status = status_of(state)
    assert [f.describe() for f in status.pending_fencing] == ["off of n1 pending; requested by n3"]
    metrics = SuperviseMetrics()
    metrics.observe_pacemaker(state)
    assert metrics.registry is not None
    assert metrics.registry.get_sample_value("pgcm_supervise_pacemaker_fencing_pending") == 1
    assert metrics.registry.get_sample_value("pgcm_supervise_pacemaker_failed_instances") == 1
    assert metrics.registry.get_sample_value("pgcm_supervise_pacemaker_blocked_instances") == 0
