"""The hold keeper: who is lost, when ``<ns>/hold`` is written, and when it goes."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import prometheus_client  # noqa: F401 - first import outside the loop (blockbuster): metrics load it lazily
import pytest
from structlog.testing import capture_logs

from pgcm_common.pacemaker import ClusterState, parse_crm_mon
from pgcm_common.records import HoldRecord, KeyLayout, PrimaryRecord
from pgcm_supervise.hold import HoldKeeper, primary_lost
from pgcm_supervise.metrics import SuperviseMetrics
from pgcm_supervise.publisher import Observation, PublishOutcome
from pgcm_testkit.fakes.etcd import FakeEtcdStore

FIXTURES = Path(__file__).parents[4] / "libs" / "pgcm-common" / "tests" / "fixtures" / "pacemaker"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
LAYOUT = KeyLayout("/pg")
TIMEOUT = timedelta(seconds=30)


def view(name: str, *, resource: str = "pgsqld") -> ClusterState:
    return parse_crm_mon((FIXTURES / name).read_text(), resource_id=resource)


def failed_primary_view() -> ClusterState:
    """The healthy n1 view with the promoted instance marked failed (a failed monitor)."""
    text = (FIXTURES / "01-healthy-n1-primary.xml").read_text()
    promoted = next(line for line in text.splitlines() if 'role="Promoted"' in line)
    return parse_crm_mon(
        text.replace(promoted, promoted.replace('failed="false"', 'failed="true"')),
        resource_id="pgsqld",
    )


@pytest.mark.parametrize(
    ("fixture", "published", "expected"),
    [
        ("01-healthy-n1-primary.xml", "n1", None),
        ("02-during-switchover.xml", "n1", None),
        ("04-partitioned-n1-view-from-n2.xml", "n1", "node n1 is offline"),
        ("04-partitioned-n1-view-from-n1.xml", "n1", None),  # minority: never holds
        ("05-after-partition-n2-minority-view.xml", "n2", None),
        ("04-partitioned-n1-view-from-n2.xml", "n9", None),  # unknown node: no failure
    ],
)
def test_primary_lost_on_real_views(fixture: str, published: str, expected: str | None) -> None:
    assert primary_lost(view(fixture), published) == expected


def test_a_failed_primary_instance_is_lost() -> None:
    assert primary_lost(failed_primary_view(), "n1") == "the instance on n1 failed"


async def publish_record(store: FakeEtcdStore, node: str, address: str) -> None:
    record = PrimaryRecord(
        node=node, address=address, with_quorum=True, dc="n2", writer="n2", observed_at=T0
    )
    await store.put(LAYOUT.master, address.encode())
    await store.put(LAYOUT.master_record, record.to_json())


def keeper(store: FakeEtcdStore, *, timeout: timedelta = TIMEOUT) -> HoldKeeper:
    return HoldKeeper(
        store=store,
        layout=LAYOUT,
        writer="n2",
        timeout=timeout,
        metrics=SuperviseMetrics(),
        clock=lambda: T0,
    )


def lost_n1() -> Observation:
    return Observation(view("04-partitioned-n1-view-from-n2.xml"), None, T0)


async def test_a_lost_primary_is_held_once_on_a_lease_until_its_deadline() -> None:
    store = FakeEtcdStore()
    await publish_record(store, "n1", "10.0.0.11")
    holds = keeper(store)
    await holds.observe(lost_n1(), PublishOutcome.REFUSED)
    first = await store.get(LAYOUT.hold)
    assert first is not None
    record = HoldRecord.from_json(first.key, first.value)
    assert (record.lost_node, record.lost_address, record.writer) == ("n1", "10.0.0.11", "n2")
    assert record.reason == "node n1 is offline"
    assert record.deadline - record.since == TIMEOUT
    assert first.lease != 0
    await holds.observe(lost_n1(), PublishOutcome.REFUSED)  # the same loss: no new hold
    again = await store.get(LAYOUT.hold)
    assert again is not None
    assert again.mod_revision == first.mod_revision


async def test_the_hold_goes_once_a_new_primary_is_published() -> None:
    store = FakeEtcdStore()
    await publish_record(store, "n1", "10.0.0.11")
    holds = keeper(store)
    await holds.observe(lost_n1(), PublishOutcome.REFUSED)
    assert await store.get(LAYOUT.hold) is not None
    await publish_record(store, "n3", "10.0.0.13")
    await holds.observe(lost_n1(), PublishOutcome.WROTE)
    assert await store.get(LAYOUT.hold) is None


def healthy_changed_at(when: str) -> ClusterState:
    """The healthy n1 view with the CIB last written at ``when`` (crm_mon's format)."""
    text = (FIXTURES / "01-healthy-n1-primary.xml").read_text()
    text = text.replace('last_change time="Wed Nov 25 17:08:11 2026"', f'last_change time="{when}"')
    return parse_crm_mon(text, resource_id="pgsqld")


async def test_the_same_primary_back_lifts_the_hold_only_from_a_newer_pacemaker_state() -> None:
    store = FakeEtcdStore()
    await publish_record(store, "n1", "10.0.0.11")
    holds = keeper(store)
    await holds.observe(lost_n1(), PublishOutcome.REFUSED)  # its CIB: 17:18:15
    # Another supervise read crm_mon later, but its CIB did not have the loss yet.
    stale = healthy_changed_at("Wed Nov 25 17:18:14 2026")
    await holds.observe(Observation(stale, None, T0 + timedelta(seconds=2)),
                        PublishOutcome.NOT_CHECKED)  # fmt: skip
    assert await store.get(LAYOUT.hold) is not None
    recovered = healthy_changed_at("Wed Nov 25 17:18:20 2026")
    await holds.observe(Observation(recovered, None, T0 + timedelta(seconds=3)),
                        PublishOutcome.NOT_CHECKED)  # fmt: skip
    assert await store.get(LAYOUT.hold) is None


async def test_without_cib_times_the_view_must_be_read_after_the_hold_began() -> None:
    store = FakeEtcdStore()
    await publish_record(store, "n1", "10.0.0.11")
    holds = keeper(store)
    await holds.observe(lost_n1(), PublishOutcome.REFUSED)  # the hold begins at T0
    healthy = dataclasses.replace(view("01-healthy-n1-primary.xml"), last_change=None)
    await holds.observe(Observation(healthy, None, T0 - timedelta(seconds=1)),
                        PublishOutcome.NOT_CHECKED)  # fmt: skip
    assert await store.get(LAYOUT.hold) is not None
    await holds.observe(Observation(healthy, None, T0 + timedelta(seconds=2)),
                        PublishOutcome.NOT_CHECKED)  # fmt: skip
    assert await store.get(LAYOUT.hold) is None


async def test_a_failed_publication_keeps_the_hold() -> None:
    store = FakeEtcdStore()
    await publish_record(store, "n1", "10.0.0.11")
    holds = keeper(store)
    await holds.observe(lost_n1(), PublishOutcome.REFUSED)
    await holds.observe(lost_n1(), PublishOutcome.CONFLICT)
    await holds.observe(lost_n1(), None)  # etcd failed for the publisher
    assert await store.get(LAYOUT.hold) is not None


@pytest.mark.parametrize(
    "fixture", ["04-partitioned-n1-view-from-n1.xml", "01-healthy-n1-primary.xml"]
)
async def test_no_hold_from_a_minority_or_a_healthy_view(fixture: str) -> None:
    store = FakeEtcdStore()
    await publish_record(store, "n1", "10.0.0.11")
    await keeper(store).observe(Observation(view(fixture), None, T0), PublishOutcome.REFUSED)
    assert await store.get(LAYOUT.hold) is None


async def test_no_hold_during_a_switchover() -> None:
    store = FakeEtcdStore()
    await publish_record(store, "n1", "10.0.0.11")
    await store.put(LAYOUT.lock, b"pgcm-failover@ops")
    await keeper(store).observe(lost_n1(), PublishOutcome.REFUSED)
    assert await store.get(LAYOUT.hold) is None


async def test_a_zero_timeout_disables_holding() -> None:
    store = FakeEtcdStore()
    await publish_record(store, "n1", "10.0.0.11")
    await keeper(store, timeout=timedelta(0)).observe(lost_n1(), PublishOutcome.REFUSED)
    assert await store.get(LAYOUT.hold) is None


async def test_no_hold_before_anything_was_published() -> None:
    store = FakeEtcdStore()
    await keeper(store).observe(lost_n1(), PublishOutcome.REFUSED)
    assert await store.get(LAYOUT.hold) is None


async def test_etcd_trouble_is_logged_not_raised() -> None:
    store = FakeEtcdStore()
    await publish_record(store, "n1", "10.0.0.11")
    store.unavailable = True
    await keeper(store).observe(lost_n1(), PublishOutcome.REFUSED)  # must not raise
    store.unavailable = False
    assert await store.get(LAYOUT.hold) is None


async def test_a_malformed_published_record_holds_nobody() -> None:
    store = FakeEtcdStore()
    await store.put(LAYOUT.master_record, b"{not json")
    await keeper(store).observe(lost_n1(), PublishOutcome.REFUSED)
    assert await store.get(LAYOUT.hold) is None


async def test_a_switchover_transition_costs_no_etcd_request() -> None:
    """In transition with every node online and nothing failed: etcd is not asked."""
    store = FakeEtcdStore()
    store.unavailable = True  # any request would fail and be logged
    transition = Observation(view("02-during-switchover.xml"), None, T0)
    with capture_logs() as logs:
        await keeper(store).observe(transition, PublishOutcome.REFUSED)
    assert [entry["event"] for entry in logs] == []
