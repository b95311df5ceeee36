from __future__ import annotations

from datetime import timedelta

import anyio
import pytest

from pgcm_common.etcd import Deleted, EtcdUnavailable, KeyValue
from pgcm_testkit.fakes.etcd import FakeEtcdStore


async def test_fake_starts_at_revision_one_and_bumps_it_per_change_only() -> None:
    store = FakeEtcdStore()
    assert store.revision == 1
    assert await store.put(b"/k", b"v") == 2
    assert not await store.delete(b"/missing")
    assert store.revision == 2


async def test_fake_unavailable_fails_every_request() -> None:
    store = FakeEtcdStore()
    store.unavailable = True
    with pytest.raises(EtcdUnavailable):
        await store.get(b"/k")
    with pytest.raises(EtcdUnavailable):
        await store.put(b"/k", b"v")


async def test_fake_lease_expiry_deletes_all_its_keys_in_one_revision() -> None:
    store = FakeEtcdStore()
    lease = await store.grant_lease(timedelta(seconds=5))
    await store.put(b"/a", b"1", lease=lease.id)
    await store.put(b"/b", b"2", lease=lease.id)
    await store.put(b"/c", b"3")
    with anyio.fail_after(1):
        async with store.open_watch(b"/", prefix=True, start_revision=0) as watch:
            store.expire_lease(lease.id)
            batches = [await watch.read(), await watch.read()]
    events = [event for batch in batches for event in batch.events]
    assert events == [Deleted(b"/a", 5), Deleted(b"/b", 5)]
    assert [kv.key for kv in (await store.get_prefix(b"/")).items] == [b"/c"]


async def test_fake_replacing_a_leased_key_without_lease_detaches_it() -> None:
    store = FakeEtcdStore()
    lease = await store.grant_lease(timedelta(seconds=5))
    await store.put(b"/k", b"1", lease=lease.id)
    await store.put(b"/k", b"2")
    await store.revoke_lease(lease.id)
    assert await store.get(b"/k") == KeyValue(b"/k", b"2", 2, 3, 2, 0)


async def test_fake_break_watches_fails_open_watches_with_unavailable() -> None:
    store = FakeEtcdStore()
    with anyio.fail_after(1):
        async with store.open_watch(b"/k", prefix=False, start_revision=0) as watch:
            store.break_watches()
            with pytest.raises(EtcdUnavailable):
                await watch.read()


async def test_fake_compaction_keeps_the_compaction_revision_itself() -> None:
    store = FakeEtcdStore()
    await store.put(b"/k", b"1")
    kept = await store.put(b"/k", b"2")
    await store.compact(kept)
    with anyio.fail_after(1):
        async with store.open_watch(b"/k", prefix=False, start_revision=kept) as watch:
            batch = await watch.read()
    assert [e.mod_revision for e in batch.events] == [kept]
