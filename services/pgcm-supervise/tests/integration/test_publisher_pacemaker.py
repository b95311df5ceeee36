"""The publisher against a real etcd and a real one-node Pacemaker cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from functools import partial

import anyio
import pytest

from pgcm_common.etcd import GatewayStore, open_etcd
from pgcm_common.pacemaker import (
    ClusterState,
    CorosyncNodeAddresses,
    CrmMon,
    CrmMonOptions,
    StaticNodeAddresses,
)
from pgcm_common.records import KeyLayout, NodeStatus, PrimaryRecord
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


@pytest.fixture
async def promoted(pacemaker_node: PacemakerNode) -> PacemakerNode:
    reader = crm(pacemaker_node)

    async def is_promoted() -> bool:
        return (await reader.read_cluster_state()).primary_node == pacemaker_node.name

    with anyio.fail_after(60):
        await eventually(is_promoted, interval_s=0.3)
    return pacemaker_node


def crm(node: PacemakerNode) -> CrmMon:
    return CrmMon(
        CrmMonOptions(
            resource_id=node.resource_id,
            command_prefix=node.command_prefix,
            timeout=timedelta(seconds=10),
        )
    )


class CountingReader:
    def __init__(self, inner: CrmMon) -> None:
        self.inner = inner
        self.reads = 0

    async def read_cluster_state(self) -> ClusterState:
        state = await self.inner.read_cluster_state()
        self.reads += 1
        return state


def publisher_for(
    store: GatewayStore, layout: KeyLayout, *, corosync: PacemakerNode | None = None
) -> PrimaryPublisher:
    resolver = (
        CorosyncNodeAddresses(command_prefix=corosync.command_prefix)
        if corosync is not None
        else StaticNodeAddresses({"pcmk1": "192.0.2.1"})
    )
    return PrimaryPublisher(
        store=store,
        layout=layout,
        resolver=resolver,
        writer="test",
        reassert_interval=timedelta(milliseconds=100),
    )


async def test_publishes_the_promoted_nodes_corosync_address_and_heals_a_deleted_key(
    store: GatewayStore, promoted: PacemakerNode
) -> None:
    layout = KeyLayout(random_key("supervise").decode())
    publisher = publisher_for(store, layout, corosync=promoted)

    async def published() -> bool:
        kv = await store.get(layout.master)
        return kv is not None and kv.value == b"127.0.0.1"

    async with anyio.create_task_group() as tg:
        with anyio.fail_after(30):
            await tg.start(
                partial(
                    serve_publisher,
                    reader=crm(promoted),
                    publisher=publisher,
                    wakeup=Wakeup(),
                    interval=timedelta(milliseconds=100),
                    retry_interval=timedelta(milliseconds=100),
                )
            )
            await eventually(published)
            record_kv = await store.get(layout.master_record)
            assert record_kv is not None
            record = PrimaryRecord.from_json(layout.master_record, record_kv.value)
            assert (record.node, record.address, record.dc) == ("pcmk1", "127.0.0.1", "pcmk1")
            assert await store.delete(layout.master)
            await eventually(published)
        tg.cancel_scope.cancel()


async def test_two_publishers_agree_without_flapping(
    store: GatewayStore, promoted: PacemakerNode
) -> None:
    layout = KeyLayout(random_key("flap").decode())
    readers = [CountingReader(crm(promoted)), CountingReader(crm(promoted))]
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(60):
            for reader in readers:
                await tg.start(
                    partial(
                        serve_publisher,
                        reader=reader,
                        publisher=publisher_for(store, layout),
                        wakeup=Wakeup(),
                        interval=timedelta(milliseconds=20),
                        retry_interval=timedelta(milliseconds=20),
                    )
                )

            async def both_busy() -> bool:
                return all(r.reads >= 15 for r in readers)

            await eventually(both_busy)
        tg.cancel_scope.cancel()
    master = await store.get(layout.master)
    record = await store.get(layout.master_record)
    assert master is not None
    assert record is not None
    assert master.value == b"192.0.2.1"
    # Each key was created once and never rewritten by the other publisher.
    assert (master.version, record.version) == (1, 1)


async def test_node_status_appears_on_a_lease_and_vanishes_with_it(
    store: GatewayStore, promoted: PacemakerNode
) -> None:
    layout = KeyLayout(random_key("status").decode())
    key = layout.node_status("pcmk1")
    async with (
        NodeStatusPublisher(
            store=store,
            layout=layout,
            node="pcmk1",
            resolver=CorosyncNodeAddresses(command_prefix=promoted.command_prefix),
            lease_ttl=timedelta(seconds=3),
            interval=timedelta(seconds=1),
        ) as status,
        anyio.create_task_group() as tg,
    ):
        with anyio.fail_after(30):
            await tg.start(
                partial(
                    serve_publisher,
                    reader=crm(promoted),
                    publisher=publisher_for(store, layout),
                    wakeup=Wakeup(),
                    interval=timedelta(milliseconds=200),
                    retry_interval=timedelta(milliseconds=200),
                    status=status,
                )
            )
            kv = await store.get(key)
            assert kv is not None
            assert kv.lease != 0
            record = NodeStatus.from_json(key, kv.value)
            assert (record.node, record.address, record.primary) == (
                "pcmk1",
                "127.0.0.1",
                "pcmk1",
            )
            assert record.with_quorum
            [me] = record.nodes
            assert (me.name, me.online, me.role) == ("pcmk1", True, "Promoted")
        tg.cancel_scope.cancel()
    # Leaving revoked the lease: the record is gone at once, not only after the TTL.
    assert await store.get(key) is None
