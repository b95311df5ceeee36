"""One suite, two stores: the in-memory fake must behave like real etcd."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import anyio
import pytest

from pgcm_common.etcd import (
    Absent,
    Deleted,
    EtcdCompacted,
    EtcdLeaseExpired,
    EtcdLock,
    EtcdStore,
    Guard,
    KeyValue,
    ModRevisionIs,
    TxnResult,
    ValueIs,
    WatchEvent,
    Write,
    open_etcd,
    watch_keys,
)
from pgcm_testkit.etcd import EtcdMember, random_key
from pgcm_testkit.fakes.etcd import FakeEtcdStore


@pytest.fixture(
    params=[
        "fake",
        pytest.param("gateway", id="etcd", marks=pytest.mark.integration),
        pytest.param("grpc", id="etcd-grpc", marks=pytest.mark.integration),
    ]
)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[EtcdStore]:
    if request.param == "fake":
        yield FakeEtcdStore()
        return
    member: EtcdMember = request.getfixturevalue("etcd")
    # Both transports of the real client (etcd.transport) pass the same suite.
    async with open_etcd(member.settings(transport=request.param)) as real:
        yield real


@pytest.fixture
def prefix() -> bytes:
    return random_key("contract")


async def test_get_of_a_missing_key_is_none(store: EtcdStore, prefix: bytes) -> None:
    with anyio.fail_after(5):
        assert await store.get(prefix + b"/missing") is None


async def test_put_creates_then_updates_with_revisions_and_versions(
    store: EtcdStore, prefix: bytes
) -> None:
    key = prefix + b"/k"
    with anyio.fail_after(5):
        first = await store.put(key, b"one")
        second = await store.put(key, b"two")
        kv = await store.get(key)
    assert second > first
    assert kv == KeyValue(key, b"two", create_revision=first, mod_revision=second, version=2)


async def test_put_if_absent_succeeds_only_once(store: EtcdStore, prefix: bytes) -> None:
    key = prefix + b"/k"
    with anyio.fail_after(5):
        assert await store.put_if(key, b"first", Absent())
        assert not await store.put_if(key, b"second", Absent())
        kv = await store.get(key)
    assert kv is not None
    assert kv.value == b"first"


async def test_put_if_mod_revision_rejects_a_stale_revision(
    store: EtcdStore, prefix: bytes
) -> None:
    key = prefix + b"/k"
    with anyio.fail_after(5):
        stale = await store.put(key, b"a")
        current = await store.put(key, b"b")
        assert not await store.put_if(key, b"lost-update", ModRevisionIs(stale))
        assert await store.put_if(key, b"c", ModRevisionIs(current))
        kv = await store.get(key)
    assert kv is not None
    assert kv.value == b"c"


async def test_put_if_mod_revision_zero_means_absent(store: EtcdStore, prefix: bytes) -> None:
    key = prefix + b"/k"
    with anyio.fail_after(5):
        assert await store.put_if(key, b"a", ModRevisionIs(0))
        assert not await store.put_if(key, b"b", ModRevisionIs(0))


async def test_put_if_value_compares_the_exact_bytes(store: EtcdStore, prefix: bytes) -> None:
    key = prefix + b"/k"
    with anyio.fail_after(5):
        assert not await store.put_if(key, b"x", ValueIs(b""))  # missing key never matches
        await store.put(key, b"10.0.0.1")
        assert not await store.put_if(key, b"x", ValueIs(b"10.0.0.2"))
        assert await store.put_if(key, b"10.0.0.3", ValueIs(b"10.0.0.1"))


async def test_put_all_if_writes_every_key_at_one_revision(store: EtcdStore, prefix: bytes) -> None:
    a, b, guard_only = prefix + b"/a", prefix + b"/b", prefix + b"/guard"
    with anyio.fail_after(5):
        old = await store.put(a, b"old")
        result = await store.put_all_if(
            [Guard(a, ModRevisionIs(old)), Guard(b, Absent()), Guard(guard_only, Absent())],
            [Write(a, b"new-a"), Write(b, b"new-b")],
        )
        kv_a, kv_b = await store.get(a), await store.get(b)
        assert await store.get(guard_only) is None
    assert result == TxnResult(succeeded=True, revision=old + 1)
    assert kv_a == KeyValue(a, b"new-a", create_revision=old, mod_revision=old + 1, version=2)
    assert kv_b == KeyValue(b, b"new-b", create_revision=old + 1, mod_revision=old + 1, version=1)


async def test_put_all_if_writes_nothing_when_one_guard_fails(
    store: EtcdStore, prefix: bytes
) -> None:
    a, b = prefix + b"/a", prefix + b"/b"
    with anyio.fail_after(5):
        rev_a = await store.put(a, b"10.0.0.1")
        stale_b = await store.put(b, b"record-1")
        rev_b = await store.put(b, b"record-2")  # a concurrent writer got there first
        result = await store.put_all_if(
            [Guard(a, ModRevisionIs(rev_a)), Guard(b, ModRevisionIs(stale_b))],
            [Write(a, b"10.0.0.2"), Write(b, b"record-3")],
        )
        by_value = await store.put_all_if(
            [Guard(a, ValueIs(b"10.0.0.1")), Guard(b, ValueIs(b"record-1"))],
            [Write(a, b"10.0.0.2"), Write(b, b"record-3")],
        )
        absent = await store.put_all_if(
            [Guard(a, ModRevisionIs(rev_a)), Guard(b, Absent())], [Write(a, b"10.0.0.2")]
        )
        kv_a, kv_b = await store.get(a), await store.get(b)
    assert result == by_value == absent == TxnResult(succeeded=False, revision=rev_b)
    assert kv_a is not None
    assert (kv_a.value, kv_a.mod_revision) == (b"10.0.0.1", rev_a)
    assert kv_b is not None
    assert (kv_b.value, kv_b.mod_revision) == (b"record-2", rev_b)


async def test_put_all_if_without_guards_writes_unconditionally(
    store: EtcdStore, prefix: bytes
) -> None:
    a, b = prefix + b"/a", prefix + b"/b"
    with anyio.fail_after(5):
        await store.put(a, b"old")
        result = await store.put_all_if([], [Write(a, b"1"), Write(b, b"2")])
        listing = await store.get_prefix(prefix + b"/")
    assert result.succeeded
    assert [(kv.value, kv.mod_revision) for kv in listing.items] == [
        (b"1", result.revision),
        (b"2", result.revision),
    ]


async def test_a_watch_sees_all_writes_of_a_transaction_in_one_response(
    store: EtcdStore, prefix: bytes
) -> None:
    a, b = prefix + b"/a", prefix + b"/b"
    with anyio.fail_after(5):
        async with store.open_watch(prefix, prefix=True, start_revision=0) as watch:
            result = await store.put_all_if(
                [Guard(a, Absent()), Guard(b, Absent())], [Write(a, b"1"), Write(b, b"2")]
            )
            batch = await watch.read()
            while not batch.events:  # skip progress notifications
                batch = await watch.read()
    rev = result.revision
    assert batch.events == (KeyValue(a, b"1", rev, rev, 1), KeyValue(b, b"2", rev, rev, 1))


async def test_put_all_if_refuses_to_write_a_key_twice(store: EtcdStore, prefix: bytes) -> None:
    a = prefix + b"/a"
    with anyio.fail_after(5), pytest.raises(ValueError, match="twice"):
        await store.put_all_if([], [Write(a, b"1"), Write(a, b"2")])
    with anyio.fail_after(5):
        assert await store.get(a) is None


async def test_put_all_if_attaches_leases_and_a_revoked_one_writes_nothing(
    store: EtcdStore, prefix: bytes
) -> None:
    a, b = prefix + b"/a", prefix + b"/b"
    with anyio.fail_after(5):
        lease = await store.grant_lease(timedelta(seconds=10))
        await store.put_all_if([], [Write(b, b"0", lease=lease.id)])
        leased = await store.get(b)
        assert leased is not None
        assert leased.lease == lease.id
        await store.revoke_lease(lease.id)
        writes = [Write(a, b"1"), Write(b, b"2", lease=lease.id)]
        with pytest.raises(EtcdLeaseExpired) as caught:
            await store.put_all_if([Guard(a, Absent())], writes)
        # A failed guard decides first: the lease is never looked at.
        failed = await store.put_all_if([Guard(a, ValueIs(b"x"))], writes)
        assert await store.get(a) is None
        assert await store.get(b) is None
    assert caught.value.lease_id == lease.id
    assert not failed.succeeded


async def test_delete_reports_whether_the_key_existed(store: EtcdStore, prefix: bytes) -> None:
    key = prefix + b"/k"
    with anyio.fail_after(5):
        await store.put(key, b"v")
        assert await store.delete(key)
        assert not await store.delete(key)
        assert await store.get(key) is None


async def test_get_prefix_lists_only_the_prefix_in_key_order(
    store: EtcdStore, prefix: bytes
) -> None:
    with anyio.fail_after(5):
        await store.put(prefix + b"/b", b"2")
        last = await store.put(prefix + b"/a", b"1")
        await store.put(prefix + b"-sibling", b"no")
        listing = await store.get_prefix(prefix + b"/")
    assert [kv.key for kv in listing.items] == [prefix + b"/a", prefix + b"/b"]
    assert listing.revision >= last + 1


async def test_revoking_a_lease_deletes_its_keys(store: EtcdStore, prefix: bytes) -> None:
    key = prefix + b"/leased"
    with anyio.fail_after(5):
        lease = await store.grant_lease(timedelta(seconds=10))
        assert lease.ttl == timedelta(seconds=10)
        await store.put(key, b"v", lease=lease.id)
        kv = await store.get(key)
        assert kv is not None
        assert kv.lease == lease.id
        assert await store.keepalive_lease(lease.id) == timedelta(seconds=10)
        await store.revoke_lease(lease.id)
        assert await store.get(key) is None
        await store.revoke_lease(lease.id)  # already gone: fine


async def test_a_revoked_lease_cannot_be_kept_alive_or_used(
    store: EtcdStore, prefix: bytes
) -> None:
    with anyio.fail_after(5):
        lease = await store.grant_lease(timedelta(seconds=10))
        await store.revoke_lease(lease.id)
        with pytest.raises(EtcdLeaseExpired):
            await store.keepalive_lease(lease.id)
        with pytest.raises(EtcdLeaseExpired):
            await store.put(prefix + b"/k", b"v", lease=lease.id)
        with pytest.raises(EtcdLeaseExpired):
            await store.put_if(prefix + b"/k", b"v", Absent(), lease=lease.id)


async def test_open_watch_from_now_sees_puts_and_deletes(store: EtcdStore, prefix: bytes) -> None:
    key = prefix + b"/k"
    with anyio.fail_after(5):
        async with store.open_watch(prefix, prefix=True, start_revision=0) as watch:
            put_rev = await store.put(key, b"v")
            await store.delete(key)
            events: list[WatchEvent] = []
            while len(events) < 2:
                events.extend((await watch.read()).events)
    assert watch.created_revision == put_rev - 1
    assert events == [KeyValue(key, b"v", put_rev, put_rev, 1), Deleted(key, put_rev + 1)]


async def test_open_watch_from_a_past_revision_replays_history(
    store: EtcdStore, prefix: bytes
) -> None:
    key = prefix + b"/k"
    with anyio.fail_after(5):
        first = await store.put(key, b"1")
        await store.put(key, b"2")
        async with store.open_watch(key, prefix=False, start_revision=first) as watch:
            batch = await watch.read()
    assert [e.value for e in batch.events if isinstance(e, KeyValue)] == [b"1", b"2"]


async def test_open_watch_from_a_compacted_revision_fails_with_compacted(
    store: EtcdStore, prefix: bytes
) -> None:
    key = prefix + b"/k"
    with anyio.fail_after(5):
        first = await store.put(key, b"1")
        last = await store.put(key, b"2")
        await store.compact(last)
        with pytest.raises(EtcdCompacted) as caught:
            async with store.open_watch(key, prefix=False, start_revision=first) as watch:
                await watch.read()
    assert caught.value.compact_revision >= last


async def test_watch_keys_relists_after_compaction(store: EtcdStore, prefix: bytes) -> None:
    key = prefix + b"/k"
    with anyio.fail_after(5):
        first = await store.put(key, b"1")
        await store.put(key, b"2")
        last = await store.put(key, b"3")
        await store.compact(last)
        async with watch_keys(store, prefix, first, prefix=True) as events:
            event = await events.receive()
    assert isinstance(event, KeyValue)
    assert (event.value, event.mod_revision) == (b"3", last)


async def test_lock_fencing_token_grows_with_each_holder(store: EtcdStore, prefix: bytes) -> None:
    key = prefix + b"/lock"
    ttl = timedelta(seconds=5)
    with anyio.fail_after(5):
        async with EtcdLock(store, key, ttl=ttl, holder="a") as first:
            token1 = await first.acquire()
        async with EtcdLock(store, key, ttl=ttl, holder="b") as second:
            token2 = await second.acquire()
            assert await store.get(key) is not None
        assert await store.get(key) is None
    assert token2 > token1
