from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import prometheus_client  # noqa: F401 - first import outside the loop (blockbuster): metrics load it lazily
import pytest
from anyio.abc import TaskGroup
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from pgcm_common.etcd import (
    Absent,
    Condition,
    EtcdStore,
    Guard,
    KeyValue,
    Lease,
    Listing,
    ModRevisionIs,
    TxnResult,
    WatchHandle,
    Write,
)
from pgcm_common.pacemaker import (
    ClusterState,
    CrmMonParseError,
    CrmMonReader,
    PacemakerCommandFailed,
    PacemakerError,
    Role,
    StaticNodeAddresses,
    parse_crm_mon,
)
from pgcm_common.records import KeyLayout, PrimaryRecord, RecordError
from pgcm_supervise.metrics import SuperviseMetrics
from pgcm_supervise.nudge import Wakeup
from pgcm_supervise.publisher import (
    Observation,
    PrimaryPublisher,
    Publish,
    PublishOutcome,
    RefusalReason,
    Refuse,
    _unchanged,
    decide,
    decide_promoted,
    read_observation,
    serve_publisher,
)
from pgcm_testkit.eventually import eventually
from pgcm_testkit.fakes.etcd import FakeEtcdStore
from pgcm_testkit.fakes.pacemaker import FakeCrmMonReader

FIXTURES = Path(__file__).parents[4] / "libs" / "pgcm-common" / "tests" / "fixtures" / "pacemaker"
ADDRESSES = {"n1": "10.0.0.11", "n2": "10.0.0.12", "n3": "10.0.0.13", "pcmk1": "127.0.0.1"}
T0 = datetime(2026, 1, 1, tzinfo=UTC)

# Every real sample and what the decision must be: the node to publish, or the reason.
EXPECTED: dict[str, tuple[str, str]] = {
    "01-healthy-legacy-as-xml.xml": ("pgsqld", "n1"),
    "01-healthy-n1-primary-from-n3.xml": ("pgsqld", "n1"),
    "01-healthy-n1-primary.xml": ("pgsqld", "n1"),
    "02-during-switchover.xml": ("pgsqld", "in_transition"),
    "02b-during-switchover.xml": ("pgsqld", "n2"),
    "03-after-kill-n2.xml": ("pgsqld", "n1"),
    "04-partitioned-n1-view-from-n1.xml": ("pgsqld", "no_quorum"),
    "04-partitioned-n1-view-from-n2.xml": ("pgsqld", "n3"),
    "05-after-partition-n2-majority-view.xml": ("pgsqld", "n3"),
    "05-after-partition-n2-minority-view.xml": ("pgsqld", "no_quorum"),
    "06-final-healthy-n1.xml": ("pgsqld", "n1"),
    "10-stock-pgsql-ra-healthy-n1.xml": ("pgsql", "n1"),
    "11-stock-pgsql-ra-after-switchover-n2.xml": ("pgsql", "n2"),
    "20-one-node-stateful.xml": ("stateful", "pcmk1"),
    "21-one-node-stateful-legacy-as-xml.xml": ("stateful", "pcmk1"),
    "30-synthetic-pacemaker-1.1-master-slave.xml": ("pgsqld", "n1"),
    # A failed or blocked primary is never published, fencing pending or not.
    "40-fencing-pending-n1-postgres-hung.xml": ("pgsqld", "primary_unhealthy"),
    "41-fenced-n1-n2-promoted.xml": ("pgsqld", "n2"),
    "42-blocked-n2-stonith-disabled.xml": ("pgsqld", "primary_unhealthy"),
    "42b-blocked-n2-view-from-n2.xml": ("pgsqld", "primary_unhealthy"),
}


def sample(metrics: SuperviseMetrics, name: str, **labels: str) -> float | None:
    """Read one sample from the exported registry."""
    assert metrics.registry is not None
    return metrics.registry.get_sample_value(name, labels)


def load(name: str) -> ClusterState:
    resource, _ = EXPECTED[name]
    return parse_crm_mon((FIXTURES / name).read_bytes(), resource_id=resource)


def observed(state: ClusterState, at: datetime = T0) -> Observation:
    return Observation(state, None, at)


def test_every_fixture_has_an_expected_decision() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.xml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_decision_for_every_real_crm_mon_sample(name: str) -> None:
    _, expected = EXPECTED[name]
    decision = decide(load(name))
    if expected in set(RefusalReason):
        assert isinstance(decision, Refuse)
        assert decision.reason == RefusalReason(expected)
    else:
        assert isinstance(decision, Publish)
        assert decision.node.name == expected


@pytest.mark.parametrize("name", sorted(p.name for p in (FIXTURES / "malformed").iterdir()))
def test_malformed_output_is_refused_as_unparseable(name: str) -> None:
    with pytest.raises(PacemakerError) as info:
        parse_crm_mon((FIXTURES / "malformed" / name).read_bytes(), resource_id="pgsqld")
    error = info.value
    decision = Observation(None, error, T0).decision()
    assert isinstance(decision, Refuse)
    assert decision.reason in {RefusalReason.UNPARSEABLE, RefusalReason.CRM_MON_FAILED}


def _mutated(state: ClusterState, roles: list[Role], online: list[bool]) -> ClusterState:
    nodes = tuple(
        dataclasses.replace(node, online=online[i % len(online)])
        for i, node in enumerate(state.nodes)
    )
    instances = tuple(
        dataclasses.replace(inst, role=roles[i % len(roles)])
        for i, inst in enumerate(state.instances)
    )
    return dataclasses.replace(state, nodes=nodes, instances=instances)


@given(
    name=st.sampled_from(sorted(EXPECTED)),
    roles=st.lists(st.sampled_from(list(Role)), min_size=1, max_size=4),
    online=st.lists(st.booleans(), min_size=1, max_size=4),
    quorum=st.booleans(),
)
def test_decision_publishes_only_one_stable_promoted_online_node_with_quorum(
    name: str,
    roles: list[Role],
    online: list[bool],
    quorum: bool,  # noqa: FBT001 - hypothesis passes it by keyword anyway
) -> None:
    state = dataclasses.replace(_mutated(load(name), roles, online), with_quorum=quorum)
    decision = decide(state)
    promoted = [i for i in state.instances if i.role is Role.PROMOTED and i.node]
    moving = [i for i in state.instances if i.role in {Role.PROMOTING, Role.DEMOTING} and i.node]
    if isinstance(decision, Publish):
        assert state.with_quorum
        assert not moving
        assert [i.node for i in promoted] == [decision.node.name]
        assert decision.node.online
        assert promoted[0].active
        assert not promoted[0].failed
    elif not quorum:
        assert decision.reason is RefusalReason.NO_QUORUM
    elif moving:
        assert decision.reason is RefusalReason.IN_TRANSITION
    elif len(promoted) > 1:
        assert decision.reason is RefusalReason.SEVERAL_PRIMARIES
    elif not promoted:
        assert decision.reason is RefusalReason.NO_PRIMARY


def test_failed_promoted_instance_is_refused_as_unhealthy() -> None:
    state = load("01-healthy-n1-primary.xml")
    instances = tuple(
        dataclasses.replace(i, failed=True) if i.role is Role.PROMOTED else i
        for i in state.instances
    )
    decision = decide(dataclasses.replace(state, instances=instances))
    assert decision == Refuse(RefusalReason.PRIMARY_UNHEALTHY, "n1: instance failed")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_publisher(
    store: EtcdStore, clock: Clock | None = None, metrics: SuperviseMetrics | None = None
) -> PrimaryPublisher:
    return PrimaryPublisher(
        store=store,
        layout=KeyLayout("/pg"),
        resolver=StaticNodeAddresses(ADDRESSES),
        writer="n2",
        reassert_interval=timedelta(seconds=10),
        metrics=metrics,
        monotonic=clock or Clock(),
    )


async def value(store: FakeEtcdStore, key: bytes) -> bytes | None:
    kv = await store.get(key)
    return None if kv is None else kv.value


async def test_publishes_bare_address_and_record() -> None:
    store = FakeEtcdStore()
    metrics = SuperviseMetrics()
    publisher = make_publisher(store, metrics=metrics)
    outcome = await publisher.publish(observed(load("01-healthy-n1-primary.xml")))
    assert outcome is PublishOutcome.WROTE
    assert await value(store, b"/pg/master") == b"10.0.0.11"
    raw = await value(store, b"/pg/master.json")
    assert raw is not None
    record = PrimaryRecord.from_json(b"/pg/master.json", raw)
    assert (record.node, record.address, record.writer, record.dc) == (
        "n1",
        "10.0.0.11",
        "n2",
        "n2",
    )
    assert record.with_quorum
    assert record.observed_at == T0
    assert (
        sample(metrics, "pgcm_supervise_published_primary_info", node="n1", address="10.0.0.11")
        == 1
    )


async def test_refusal_keeps_last_value_and_counts_the_reason() -> None:
    store = FakeEtcdStore()
    metrics = SuperviseMetrics()
    publisher = make_publisher(store, metrics=metrics)
    await publisher.publish(observed(load("01-healthy-n1-primary.xml")))
    revision = (await store.get(b"/pg/master")).mod_revision  # type: ignore[union-attr]
    for name in ("04-partitioned-n1-view-from-n1.xml", "02-during-switchover.xml"):
        outcome = await publisher.publish(observed(load(name), T0 + timedelta(seconds=1)))
        assert outcome is PublishOutcome.REFUSED
    failed = Observation(None, PacemakerCommandFailed(("crm_mon",), 102, "down"), T0)
    assert await publisher.publish(failed) is PublishOutcome.REFUSED
    kv = await store.get(b"/pg/master")
    assert kv is not None
    assert (kv.value, kv.mod_revision) == (b"10.0.0.11", revision)
    for reason in ("no_quorum", "in_transition", "crm_mon_failed"):
        assert sample(metrics, "pgcm_supervise_refusals_total", reason=reason) == 1


async def test_unknown_address_is_refused() -> None:
    store = FakeEtcdStore()
    publisher = PrimaryPublisher(
        store=store,
        layout=KeyLayout("/pg"),
        resolver=StaticNodeAddresses({"n2": "10.0.0.12"}),
        writer="n2",
        reassert_interval=timedelta(seconds=10),
    )
    outcome = await publisher.publish(observed(load("01-healthy-n1-primary.xml")))
    assert outcome is PublishOutcome.REFUSED
    assert await store.get(b"/pg/master") is None


async def test_equal_value_is_not_rewritten_and_a_deleted_key_heals_at_reassert() -> None:
    store = FakeEtcdStore()
    clock = Clock()
    publisher = make_publisher(store, clock)
    healthy = observed(load("01-healthy-n1-primary.xml"))
    assert await publisher.publish(healthy) is PublishOutcome.WROTE
    revision = (await store.get(b"/pg/master")).mod_revision  # type: ignore[union-attr]
    assert await publisher.publish(healthy) is PublishOutcome.NOT_CHECKED
    clock.now += 11
    assert await publisher.publish(healthy) is PublishOutcome.UNCHANGED
    assert (await store.get(b"/pg/master")).mod_revision == revision  # type: ignore[union-attr]
    await store.delete(b"/pg/master")
    assert await publisher.publish(healthy) is PublishOutcome.NOT_CHECKED
    clock.now += 11
    assert await publisher.publish(healthy) is PublishOutcome.WROTE
    assert await value(store, b"/pg/master") == b"10.0.0.11"


async def test_different_value_is_replaced_by_a_newer_view() -> None:
    store = FakeEtcdStore()
    publisher = make_publisher(store)
    await publisher.publish(observed(load("01-healthy-n1-primary.xml"), T0))
    later = observed(load("02b-during-switchover.xml"), T0 + timedelta(seconds=1))
    assert await publisher.publish(later) is PublishOutcome.WROTE
    assert await value(store, b"/pg/master") == b"10.0.0.12"


async def test_older_view_never_overwrites_a_newer_record() -> None:
    store = FakeEtcdStore()
    fast, slow = make_publisher(store), make_publisher(store)
    await fast.publish(observed(load("02b-during-switchover.xml"), T0 + timedelta(seconds=1)))
    stale = observed(load("01-healthy-n1-primary.xml"), T0)
    assert await slow.publish(stale) is PublishOutcome.REFUSED
    assert await value(store, b"/pg/master") == b"10.0.0.12"


class RacingStore:
    """Another writer acts once between our reads and our transaction; counts our calls."""

    def __init__(self, interfere: Callable[[FakeEtcdStore], Awaitable[object]] | None) -> None:
        self.inner = FakeEtcdStore()
        self._interfere = interfere
        self.reads = 0
        self.transactions = 0

    async def get(self, key: bytes) -> KeyValue | None:
        self.reads += 1
        return await self.inner.get(key)

    async def get_prefix(self, prefix: bytes) -> Listing:
        return await self.inner.get_prefix(prefix)

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        return await self.inner.put(key, value, lease=lease)

    async def put_if(
        self, key: bytes, value: bytes, condition: Condition, *, lease: int = 0
    ) -> bool:
        return await self.inner.put_if(key, value, condition, lease=lease)

    async def put_all_if(self, guards: Sequence[Guard], writes: Sequence[Write]) -> TxnResult:
        self.transactions += 1
        if self._interfere is not None:
            interfere, self._interfere = self._interfere, None
            await interfere(self.inner)
        return await self.inner.put_all_if(guards, writes)

    async def delete(self, key: bytes) -> bool:
        return await self.inner.delete(key)

    async def grant_lease(self, ttl: timedelta) -> Lease:
        return await self.inner.grant_lease(ttl)

    async def keepalive_lease(self, lease_id: int) -> timedelta:
        return await self.inner.keepalive_lease(lease_id)

    async def revoke_lease(self, lease_id: int) -> None:
        await self.inner.revoke_lease(lease_id)

    async def compact(self, revision: int) -> None:
        await self.inner.compact(revision)

    def open_watch(
        self, key: bytes, *, prefix: bool, start_revision: int
    ) -> AbstractAsyncContextManager[WatchHandle]:
        return self.inner.open_watch(key, prefix=prefix, start_revision=start_revision)


async def record_of(store: FakeEtcdStore) -> PrimaryRecord | None:
    raw = await value(store, b"/pg/master.json")
    return None if raw is None else PrimaryRecord.from_json(b"/pg/master.json", raw)


async def test_compare_and_put_conflict_writes_nothing_and_rechecks_next_cycle() -> None:
    async def other_address(inner: FakeEtcdStore) -> None:
        await inner.put(b"/pg/master", b"10.9.9.9")

    store = RacingStore(other_address)
    metrics = SuperviseMetrics()
    publisher = make_publisher(store, metrics=metrics)
    healthy = observed(load("01-healthy-n1-primary.xml"))
    with capture_logs() as logs:
        assert await publisher.publish(healthy) is PublishOutcome.CONFLICT
    assert await value(store.inner, b"/pg/master") == b"10.9.9.9"
    assert await store.inner.get(b"/pg/master.json") is None  # the record was not written
    assert sample(metrics, "pgcm_supervise_publish_conflicts_total") == 1
    assert sample(metrics, "pgcm_supervise_publications_total", key="record") is None
    assert [e["event"] for e in logs] == ["etcd.master.conflict"]
    assert await publisher.publish(healthy) is PublishOutcome.WROTE
    assert await value(store.inner, b"/pg/master") == b"10.0.0.11"


async def test_a_new_primary_is_written_on_the_revisions_last_seen_without_a_read() -> None:
    store = RacingStore(None)
    publisher = make_publisher(store)
    await publisher.publish(observed(load("01-healthy-n1-primary.xml"), T0))
    reads = store.reads
    later = observed(load("02b-during-switchover.xml"), T0 + timedelta(seconds=1))
    assert await publisher.publish(later) is PublishOutcome.WROTE
    assert store.reads == reads  # one transaction, guarded on what the last one wrote
    assert store.transactions == 2
    assert await value(store.inner, b"/pg/master") == b"10.0.0.12"
    record = await record_of(store.inner)
    assert record is not None
    assert (record.node, record.observed_at) == ("n2", T0 + timedelta(seconds=1))
    # And back: the revisions kept after that write guard the next one too.
    back = observed(load("06-final-healthy-n1.xml"), T0 + timedelta(seconds=2))
    assert await publisher.publish(back) is PublishOutcome.WROTE
    assert (store.reads, store.transactions) == (reads, 3)
    assert await value(store.inner, b"/pg/master") == b"10.0.0.11"


async def test_keys_changed_since_last_seen_are_read_again_before_deciding() -> None:
    store = RacingStore(None)
    metrics = SuperviseMetrics()
    ours, other = make_publisher(store, metrics=metrics), make_publisher(store.inner)
    await ours.publish(observed(load("01-healthy-n1-primary.xml"), T0))
    # Another supervise published n2 first; ours then sees the same promotion.
    await other.publish(observed(load("02b-during-switchover.xml"), T0 + timedelta(seconds=1)))
    written = await store.inner.get(b"/pg/master")
    with capture_logs() as logs:
        later = observed(load("02b-during-switchover.xml"), T0 + timedelta(seconds=2))
        assert await ours.publish(later) is PublishOutcome.UNCHANGED
    assert await store.inner.get(b"/pg/master") == written
    # The guard caught the change: no conflict to report, nothing overwritten.
    assert (sample(metrics, "pgcm_supervise_publish_conflicts_total") or 0) == 0
    assert [e["event"] for e in logs] == []


async def test_a_view_older_than_a_record_written_since_last_seen_is_refused() -> None:
    store = RacingStore(None)
    metrics = SuperviseMetrics()
    ours, other = make_publisher(store, metrics=metrics), make_publisher(store.inner)
    await ours.publish(observed(load("01-healthy-n1-primary.xml"), T0))
    await other.publish(
        observed(load("04-partitioned-n1-view-from-n2.xml"), T0 + timedelta(seconds=5))
    )
    older = observed(load("02b-during-switchover.xml"), T0 + timedelta(seconds=1))
    assert await ours.publish(older) is PublishOutcome.REFUSED
    assert await value(store.inner, b"/pg/master") == b"10.0.0.13"
    assert sample(metrics, "pgcm_supervise_refusals_total", reason="stale_view") == 1


async def test_address_and_record_change_together_at_one_revision() -> None:
    store = FakeEtcdStore()
    metrics = SuperviseMetrics()
    publisher = make_publisher(store, metrics=metrics)
    views = [
        (observed(load("01-healthy-n1-primary.xml"), T0), "n1", b"10.0.0.11"),
        (
            observed(load("02b-during-switchover.xml"), T0 + timedelta(seconds=1)),
            "n2",
            b"10.0.0.12",
        ),
    ]
    with anyio.fail_after(5):
        async with store.open_watch(b"/pg/master", prefix=True, start_revision=0) as watch:
            for observation, node, address in views:
                with capture_logs() as logs:
                    assert await publisher.publish(observation) is PublishOutcome.WROTE
                batch = await watch.read()
                # Both keys arrive in one watch response: no reader sees one without the other.
                assert [(e.key, e.mod_revision) for e in batch.events] == [
                    (b"/pg/master", store.revision),
                    (b"/pg/master.json", store.revision),
                ]
                record = await record_of(store)
                assert record is not None
                assert (record.node, record.address.encode()) == (node, address)
                assert await value(store, b"/pg/master") == address
                assert [(e["event"], e["revision"]) for e in logs] == [
                    ("etcd.master.publish", store.revision),
                    ("etcd.master_record.publish", store.revision),
                ]
    for key in ("master", "record"):
        assert sample(metrics, "pgcm_supervise_publications_total", key=key) == 2


async def test_a_concurrent_writers_newer_record_is_not_overwritten() -> None:
    newer = observed(load("02b-during-switchover.xml"), T0 + timedelta(seconds=1))

    async def faster_supervise(inner: FakeEtcdStore) -> None:
        other = PrimaryPublisher(
            store=inner,
            layout=KeyLayout("/pg"),
            resolver=StaticNodeAddresses(ADDRESSES),
            writer="n3",
            reassert_interval=timedelta(seconds=10),
        )
        assert await other.publish(newer) is PublishOutcome.WROTE

    store = RacingStore(faster_supervise)
    publisher = make_publisher(store)
    stale = observed(load("01-healthy-n1-primary.xml"), T0)
    assert await publisher.publish(stale) is PublishOutcome.CONFLICT
    written = await store.inner.get(b"/pg/master")
    # Our next cycle with the same (older) view reads the newer record and refuses.
    assert await publisher.publish(stale) is PublishOutcome.REFUSED
    assert await store.inner.get(b"/pg/master") == written
    record = await record_of(store.inner)
    assert record is not None
    assert (record.node, record.address, record.writer) == ("n2", "10.0.0.12", "n3")
    assert await value(store.inner, b"/pg/master") == b"10.0.0.12"


async def test_a_record_fix_is_dropped_when_the_address_changed_meanwhile() -> None:
    async def other_address(inner: FakeEtcdStore) -> None:
        await inner.put(b"/pg/master", b"10.9.9.9")

    store = RacingStore(other_address)
    await store.inner.put(b"/pg/master", b"10.0.0.11")  # the address is right, no record
    publisher = make_publisher(store)
    assert await publisher.publish(observed(load("01-healthy-n1-primary.xml"))) is (
        PublishOutcome.CONFLICT
    )
    # The record alone would have named n1 beside 10.9.9.9: the guard on the unwritten
    # address key kept them from disagreeing.
    assert await store.inner.get(b"/pg/master.json") is None
    assert await value(store.inner, b"/pg/master") == b"10.9.9.9"


async def test_a_deleted_address_is_not_healed_from_a_view_older_than_the_record() -> None:
    store = FakeEtcdStore()
    fast, slow = make_publisher(store), make_publisher(store)
    await fast.publish(observed(load("02b-during-switchover.xml"), T0 + timedelta(seconds=1)))
    await store.delete(b"/pg/master")
    assert await slow.publish(observed(load("01-healthy-n1-primary.xml"), T0)) is (
        PublishOutcome.REFUSED
    )
    assert await store.get(b"/pg/master") is None
    fast.force_check()
    later = observed(load("02b-during-switchover.xml"), T0 + timedelta(seconds=2))
    assert await fast.publish(later) is PublishOutcome.WROTE
    assert await value(store, b"/pg/master") == b"10.0.0.12"


async def test_malformed_record_is_overwritten() -> None:
    store = FakeEtcdStore()
    await store.put(b"/pg/master.json", b"{not json")
    publisher = make_publisher(store)
    assert await publisher.publish(observed(load("01-healthy-n1-primary.xml"))) is (
        PublishOutcome.WROTE
    )
    raw = await value(store, b"/pg/master.json")
    assert raw is not None
    assert PrimaryRecord.from_json(b"k", raw).node == "n1"


async def test_read_observation_turns_reader_errors_into_refusals() -> None:
    reader = FakeCrmMonReader(CrmMonParseError("truncated"))
    obs = await read_observation(reader)
    assert obs.state is None
    decision = obs.decision()
    assert isinstance(decision, Refuse)
    assert decision.reason is RefusalReason.UNPARSEABLE


async def start_loop(
    tg: TaskGroup,
    reader: CrmMonReader,
    store: FakeEtcdStore,
    wakeup: Wakeup,
    *,
    transition_interval: timedelta | None = None,
    promote_notice: bool = False,
) -> PublishOutcome | None:
    """Start serve_publisher (hour-long intervals: only nudges wake it); its first outcome."""
    outcome: PublishOutcome | None = await tg.start(
        lambda task_status: serve_publisher(
            reader=reader,
            publisher=make_publisher(store),
            wakeup=wakeup,
            interval=timedelta(hours=1),
            retry_interval=timedelta(hours=1),
            transition_interval=transition_interval,
            promote_notice=promote_notice,
            task_status=task_status,
        )
    )
    return outcome


async def test_loop_publishes_then_follows_a_nudged_promotion() -> None:
    store = FakeEtcdStore()
    reader = FakeCrmMonReader(load("01-healthy-n1-primary.xml"))
    wakeup = Wakeup()
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(5):
            first = await start_loop(tg, reader, store, wakeup)
        assert first is PublishOutcome.WROTE
        reader.set_state(load("02b-during-switchover.xml"))
        wakeup.set()

        async def moved() -> bool:
            return await value(store, b"/pg/master") == b"10.0.0.12"

        with anyio.fail_after(5):
            await eventually(moved)
        tg.cancel_scope.cancel()


async def test_after_a_promote_nudge_an_unpublishable_view_is_re_read_until_it_settles() -> None:
    store = FakeEtcdStore()
    reader = FakeCrmMonReader(load("01-healthy-n1-primary.xml"))
    wakeup = Wakeup()
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(5):
            await start_loop(
                tg, reader, store, wakeup, transition_interval=timedelta(milliseconds=10)
            )
        # The promote nudge arrives while the CIB still shows the promotion in flight ...
        reader.fail_with(CrmMonParseError("no promoted instance yet"))
        reads = reader.reads
        wakeup.set(promotion=True)

        async def re_read_twice() -> bool:
            return reader.reads >= reads + 2

        with anyio.fail_after(5):
            await eventually(re_read_twice)
        # ... and the promotion lands with no further nudge: the fast re-read finds it.
        reader.set_state(load("02b-during-switchover.xml"))

        async def moved() -> bool:
            return await value(store, b"/pg/master") == b"10.0.0.12"

        with anyio.fail_after(5):
            await eventually(moved)
        tg.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("transition_interval", "promotion"),
    [(None, True), (timedelta(milliseconds=10), False)],
    ids=["no-transition-interval", "nudge-not-a-promote"],
)
async def test_an_unpublishable_view_waits_for_the_interval_unless_a_promote_was_reported(
    transition_interval: timedelta | None,
    promotion: bool,  # noqa: FBT001 - a parametrized flag
) -> None:
    store = FakeEtcdStore()
    reader = FakeCrmMonReader(CrmMonParseError("no promoted instance yet"))
    wakeup = Wakeup()
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(5):
            await start_loop(tg, reader, store, wakeup, transition_interval=transition_interval)
        wakeup.set(promotion=promotion)

        async def nudged_read() -> bool:
            return reader.reads >= 2

        with anyio.fail_after(5):
            await eventually(nudged_read)
        await anyio.sleep(0.2)  # room for reads that must not happen
        assert reader.reads == 2
        tg.cancel_scope.cancel()


def test_compare_and_put_condition_is_absent_or_the_revision_just_read() -> None:
    assert _unchanged(None) == Absent()
    kv = KeyValue(b"k", b"v", create_revision=1, mod_revision=7, version=1)
    assert _unchanged(kv) == ModRevisionIs(7)


async def test_newer_cib_view_wins_even_from_a_writer_whose_clock_is_behind() -> None:
    store = FakeEtcdStore()
    skewed_ahead, behind = make_publisher(store), make_publisher(store)
    # 02b: CIB written 17:08:34, n2 primary; 06: CIB written 17:37:41, n1 primary again.
    early = observed(load("02b-during-switchover.xml"), T0 + timedelta(minutes=5))
    assert await skewed_ahead.publish(early) is PublishOutcome.WROTE
    late = observed(load("06-final-healthy-n1.xml"), T0)
    assert await behind.publish(late) is PublishOutcome.WROTE
    raw = await value(store, b"/pg/master.json")
    assert raw is not None
    record = PrimaryRecord.from_json(b"k", raw)
    assert (record.node, record.pacemaker_last_change) == ("n1", "Wed Nov 25 17:37:41 2026")


async def test_record_with_a_naive_timestamp_is_overwritten_not_a_crash() -> None:
    store = FakeEtcdStore()
    await store.put(b"/pg/master", b"10.0.0.12")
    naive = (
        b'{"node":"n2","address":"10.0.0.12","with_quorum":true,"dc":"n1",'
        b'"writer":"n9","observed_at":"2099-01-01T00:00:00"}'
    )
    await store.put(b"/pg/master.json", naive)
    with pytest.raises(RecordError):
        PrimaryRecord.from_json(b"k", naive)
    publisher = make_publisher(store)
    assert await publisher.publish(observed(load("01-healthy-n1-primary.xml"))) is (
        PublishOutcome.WROTE
    )
    assert await value(store, b"/pg/master") == b"10.0.0.11"


# -- the alert agent's promote notice ---------------------------------------------------


def test_a_promote_notice_completes_a_view_of_that_node_promoting() -> None:
    # The real crm_mon sample of n2 promoting, n1 already demoted.
    assert decide_promoted(load("02-during-switchover.xml"), "n2") == Publish(
        load("02-during-switchover.xml").node("n2")  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("name", "promoted"),
    [
        ("02-during-switchover.xml", "n3"),  # another node is promoting
        ("01-healthy-n1-primary.xml", "n2"),  # n1 is still promoted
        ("04-partitioned-n1-view-from-n1.xml", "n1"),  # no quorum
        ("02b-during-switchover.xml", "n2"),  # already settled: the regular read decides
    ],
)
def test_a_promote_notice_the_last_view_does_not_back_is_refused(name: str, promoted: str) -> None:
    decision = decide_promoted(load(name), promoted)
    assert isinstance(decision, Refuse)


def test_a_promote_notice_for_a_node_that_went_offline_is_refused() -> None:
    state = load("02-during-switchover.xml")
    node = state.node("n2")
    assert node is not None
    offline = dataclasses.replace(node, online=False)
    nodes = tuple(offline if n.name == "n2" else n for n in state.nodes)
    decision = decide_promoted(dataclasses.replace(state, nodes=nodes), "n2")
    assert decision == Refuse(RefusalReason.PRIMARY_UNHEALTHY, "n2: node offline")


class HeldReader:
    """A FakeCrmMonReader whose reads can be held in flight (a slow crm_mon)."""

    def __init__(self, state: ClusterState) -> None:
        self.fake = FakeCrmMonReader(state)
        self.release = anyio.Event()
        self.release.set()
        self.waiting = 0

    async def read_cluster_state(self) -> ClusterState:
        self.waiting += 1
        await self.release.wait()
        return await self.fake.read_cluster_state()


async def _serve_until_promote_notice(
    *, promote_notice: bool, promoted: str, published: bytes
) -> FakeEtcdStore:
    """n1 published; a read sees n2 promoting; a notice comes while the next read hangs."""
    store = FakeEtcdStore()
    reader = HeldReader(load("01-healthy-n1-primary.xml"))
    wakeup = Wakeup()
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(5):
            await start_loop(tg, reader, store, wakeup, promote_notice=promote_notice)
        reader.fake.set_state(load("02-during-switchover.xml"))
        wakeup.set()

        async def read_the_promoting_view() -> bool:
            return reader.fake.reads >= 2

        with anyio.fail_after(5):
            await eventually(read_the_promoting_view)
        # The next read hangs (a slow crm_mon): only the notice can publish meanwhile.
        reader.release = anyio.Event()
        waiting = reader.waiting
        wakeup.set()

        async def read_in_flight() -> bool:
            return reader.waiting > waiting

        with anyio.fail_after(5):
            await eventually(read_in_flight)
        wakeup.set(promoted=promoted)

        async def master_is_expected() -> bool:
            return await value(store, b"/pg/master") == published

        with anyio.fail_after(5):
            await eventually(master_is_expected)
        await anyio.sleep(0.1)  # room for a publication that must not happen
        assert await value(store, b"/pg/master") == published
        assert reader.fake.reads == 2  # all of it while the third read was in flight
        reader.release.set()
        tg.cancel_scope.cancel()
    return store


async def test_a_confirmed_promote_notice_publishes_while_a_read_is_in_flight() -> None:
    store = await _serve_until_promote_notice(
        promote_notice=True, promoted="n2", published=b"10.0.0.12"
    )
    record = await store.get(b"/pg/master.json")
    assert record is not None
    assert PrimaryRecord.from_json(record.key, record.value).node == "n2"


@pytest.mark.parametrize(
    ("promote_notice", "promoted"),
    [(False, "n2"), (True, "n3")],
    ids=["notices-off", "notice-names-another-node"],
)
async def test_an_unconfirmed_or_disabled_promote_notice_publishes_nothing(
    promote_notice: bool,  # noqa: FBT001 - a parametrized flag
    promoted: str,
) -> None:
    store = await _serve_until_promote_notice(
        promote_notice=promote_notice, promoted=promoted, published=b"10.0.0.11"
    )
    record = await store.get(b"/pg/master.json")
    assert record is not None
    assert PrimaryRecord.from_json(record.key, record.value).node == "n1"
