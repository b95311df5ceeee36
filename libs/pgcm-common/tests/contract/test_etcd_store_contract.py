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
    KeyValue,
    ModRevisionIs,
    ValueIs,
    WatchEvent,
    open_etcd,
    watch_keys,
)
from pgcm_testkit.etcd import EtcdMember, random_key
from pgcm_testkit.fakes.etcd import FakeEtcdStore


@pytest.fixture(params=["fake", pytest.param("etcd", marks=pytest.mark.integration)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[EtcdStore]:
    if request.param == "fake":
        yield FakeEtcdStore()
        return
    member: EtcdMember = request.getfixturevalue("etcd")
    async with open_etcd(member.settings()) as real:
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
