"""The publisher's single transaction against a real etcd (views from real crm_mon samples)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from pgcm_common.etcd import GatewayStore, KeyValue, open_etcd
from pgcm_common.pacemaker import StaticNodeAddresses, parse_crm_mon
from pgcm_common.records import KeyLayout, PrimaryRecord
from pgcm_supervise.publisher import Observation, PrimaryPublisher, PublishOutcome
from pgcm_testkit.etcd import EtcdMember, random_key

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parents[4] / "libs" / "pgcm-common" / "tests" / "fixtures" / "pacemaker"
ADDRESSES = {"n1": "10.0.0.11", "n2": "10.0.0.12", "n3": "10.0.0.13"}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def store(etcd: EtcdMember) -> AsyncIterator[GatewayStore]:
    async with open_etcd(etcd.settings()) as client:
        yield client


def observed(name: str, seconds: int) -> Observation:
    state = parse_crm_mon((FIXTURES / name).read_bytes(), resource_id="pgsqld")
    return Observation(state, None, T0 + timedelta(seconds=seconds))


def publisher(store: GatewayStore, layout: KeyLayout, writer: str) -> PrimaryPublisher:
    return PrimaryPublisher(
        store=store,
        layout=layout,
        resolver=StaticNodeAddresses(ADDRESSES),
        writer=writer,
        reassert_interval=timedelta(seconds=10),
    )


async def both(store: GatewayStore, layout: KeyLayout) -> tuple[KeyValue, PrimaryRecord, int]:
    master = await store.get(layout.master)
    record_kv = await store.get(layout.master_record)
    assert master is not None
    assert record_kv is not None
    record = PrimaryRecord.from_json(layout.master_record, record_kv.value)
    return master, record, record_kv.mod_revision


async def test_a_watch_sees_address_and_record_change_in_one_response(store: GatewayStore) -> None:
    layout = KeyLayout(random_key("txn").decode())
    mine = publisher(store, layout, "n3")
    with anyio.fail_after(10):
        async with store.open_watch(layout.master, prefix=True, start_revision=0) as watch:
            for name, seconds, address in (
                ("01-healthy-n1-primary.xml", 0, b"10.0.0.11"),
                ("02b-during-switchover.xml", 1, b"10.0.0.12"),
            ):
                assert await mine.publish(observed(name, seconds)) is PublishOutcome.WROTE
                batch = await watch.read()
                while not batch.events:  # progress notifications carry none
                    batch = await watch.read()
                master, record, record_revision = await both(store, layout)
                assert master.value == address
                assert record.address.encode() == address
                assert record_revision == master.mod_revision
                assert [(e.key, e.mod_revision) for e in batch.events] == [
                    (layout.master, master.mod_revision),
                    (layout.master_record, master.mod_revision),
                ]


async def test_concurrent_publishers_write_once_and_an_older_view_is_refused(
    store: GatewayStore,
) -> None:
    layout = KeyLayout(random_key("race").decode())
    view = observed("01-healthy-n1-primary.xml", 0)
    outcomes: list[PublishOutcome] = []

    async def run(writer: str) -> None:
        outcomes.append(await publisher(store, layout, writer).publish(view))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for writer in ("n1", "n2", "n3"):
                tg.start_soon(run, writer)
        master, record, record_revision = await both(store, layout)
        # A newer view moves both keys; a slower publisher with an older view is refused.
        newer = observed("02b-during-switchover.xml", 5)
        assert await publisher(store, layout, "n2").publish(newer) is PublishOutcome.WROTE
        older = observed("01-healthy-n1-primary.xml", 3)
        assert await publisher(store, layout, "n1").publish(older) is PublishOutcome.REFUSED
        after, newest, newest_revision = await both(store, layout)
    assert outcomes.count(PublishOutcome.WROTE) == 1
    assert set(outcomes) <= {
        PublishOutcome.WROTE,
        PublishOutcome.UNCHANGED,
        PublishOutcome.CONFLICT,
    }
    assert (master.value, master.version) == (b"10.0.0.11", 1)
    assert (record.node, record.address, record_revision) == (
        "n1",
        "10.0.0.11",
        master.mod_revision,
    )
    assert (after.value, newest.node, newest.writer) == (b"10.0.0.12", "n2", "n2")
    assert newest_revision == after.mod_revision
