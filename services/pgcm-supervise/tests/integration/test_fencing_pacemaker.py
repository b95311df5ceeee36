"""A real fencing failure in a real one-node Pacemaker: crm_mon, NodeStatus, metrics, health.

The one-node cluster has no fence device, so ``stonith_admin --fence`` (off) of its own node
fails at once: a real entry of the fencer's history, printed by the same crm_mon
command supervise runs. The history is cleaned up afterwards (the node is shared by
the session's tests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from functools import partial

import anyio
import pytest

from pgcm_common.etcd import GatewayStore, open_etcd
from pgcm_common.pacemaker import (
    CrmMon,
    CrmMonOptions,
    FenceStatus,
    StaticNodeAddresses,
)
from pgcm_common.records import KeyLayout, NodeStatus
from pgcm_supervise.metrics import SuperviseMetrics
from pgcm_supervise.nudge import Wakeup
from pgcm_supervise.publisher import PrimaryPublisher, serve_publisher
from pgcm_supervise.status import NodeStatusPublisher
from pgcm_testkit.etcd import EtcdMember, random_key
from pgcm_testkit.eventually import eventually
from pgcm_testkit.pacemaker import PacemakerNode

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(etcd: EtcdMember) -> AsyncIterator[GatewayStore]:
    async with open_etcd(etcd.settings()) as client:
        yield client


async def in_node(node: PacemakerNode, *argv: str) -> int:
    with anyio.fail_after(60):
        done = await anyio.run_process([*node.command_prefix, *argv], check=False)
    return done.returncode


@pytest.fixture
async def failed_fencing(pacemaker_node: PacemakerNode) -> AsyncIterator[PacemakerNode]:
    node = pacemaker_node
    # No device can fence the node: the request fails ("No such device") and the fencer
    # records the failed action.
    assert await in_node(node, "stonith_admin", "--fence", node.name, "--timeout", "5") != 0
    try:
        yield node
    finally:
        assert await in_node(node, "stonith_admin", "--cleanup", "--history", node.name) == 0


@pytest.fixture
def metrics() -> SuperviseMetrics:
    # Built outside the event loop: creating the registry imports prometheus_client.
    return SuperviseMetrics()


def crm(node: PacemakerNode) -> CrmMon:
    return CrmMon(
        CrmMonOptions(
            resource_id=node.resource_id,
            command_prefix=node.command_prefix,
            timeout=timedelta(seconds=10),
        )
    )


async def test_a_failed_fencing_reaches_the_state_the_record_and_the_gauges(
    store: GatewayStore, failed_fencing: PacemakerNode, metrics: SuperviseMetrics
) -> None:
    node = failed_fencing
    state = await crm(node).read_cluster_state()
    [action] = [f for f in state.fencing if f.target == node.name]
    assert (action.action, action.status) == ("off", FenceStatus.FAILED)
    assert action.origin == node.name
    assert action.client.startswith("stonith_admin")
    assert state.failed_fencing == (action,)
    assert state.pending_fencing == ()
    assert state.fence_history_error is None
    # Failed fencing is shown, but alone it neither blocks nor is pending.
    assert state.needs_attention() == ()

    layout = KeyLayout(random_key("fencing").decode())
    async with (
        NodeStatusPublisher(
            store=store,
            layout=layout,
            node=node.name,
            resolver=StaticNodeAddresses({node.name: "192.0.2.1"}),
            lease_ttl=timedelta(seconds=3),
            interval=timedelta(seconds=1),
            metrics=metrics,
        ) as status,
        anyio.create_task_group() as tg,
    ):
        with anyio.fail_after(30):
            await tg.start(
                partial(
                    serve_publisher,
                    reader=crm(node),
                    publisher=PrimaryPublisher(
                        store=store,
                        layout=layout,
                        resolver=StaticNodeAddresses({node.name: "192.0.2.1"}),
                        writer="test",
                        reassert_interval=timedelta(milliseconds=100),
                    ),
                    wakeup=Wakeup(),
                    interval=timedelta(milliseconds=200),
                    retry_interval=timedelta(milliseconds=200),
                    status=status,
                    metrics=metrics,
                )
            )

            seen: list[NodeStatus] = []

            async def published() -> bool:
                kv = await store.get(layout.node_status(node.name))
                if kv is not None:
                    seen.append(NodeStatus.from_json(kv.key, kv.value))
                return bool(seen and seen[-1].fencing)

            await eventually(published, interval_s=0.2)
            record = seen[-1]
        tg.cancel_scope.cancel()
    [published_action] = [f for f in record.fencing if f.target == node.name]
    assert (published_action.action, published_action.state) == ("off", "failed")
    assert record.troubled_instances == ()
    assert metrics.registry is not None
    sample = metrics.registry.get_sample_value
    assert sample("pgcm_supervise_pacemaker_fencing_failed") == 1
    assert sample("pgcm_supervise_pacemaker_fencing_pending") == 0
    assert sample("pgcm_supervise_pacemaker_blocked_instances") == 0
