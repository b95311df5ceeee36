from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from structlog.testing import capture_logs

from pgcm_common.etcd import (
    EtcdError,
    EtcdLock,
    LockHolder,
    lock_key,
    read_lock_status,
)
from pgcm_testkit.eventually import eventually
from pgcm_testkit.fakes.etcd import FakeEtcdStore

TTL = timedelta(seconds=3)
KEY = lock_key("/postgres")


def test_lock_key_is_namespace_slash_lock() -> None:
    assert lock_key("/postgres/") == b"/postgres/lock"


def test_holder_record_round_trips_through_json() -> None:
    holder = LockHolder("failover", "node1", 42, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert LockHolder.from_json(holder.to_json()) == holder


@pytest.mark.parametrize("raw", [b"", b"not json", b"{}", b'{"holder": "x", "pid": "nan"}'])
def test_holder_record_rejects_garbage_with_an_etcd_error(raw: bytes) -> None:
    with pytest.raises(EtcdError, match="holder record"):
        LockHolder.from_json(raw)


async def test_acquire_holds_the_key_on_a_lease_and_records_the_holder() -> None:
    store = FakeEtcdStore()
    with capture_logs() as logs, anyio.fail_after(2):
        async with EtcdLock(store, KEY, ttl=TTL, holder="failover") as lock:
            token = await lock.acquire()
            status = await read_lock_status(store, KEY)
            assert lock.held
            assert lock.fencing_token == token
        assert await store.get(KEY) is None
        assert not is_held(lock)
    assert status is not None
    assert status.fencing_token == token
    assert status.holder is not None
    assert (status.holder.holder, status.holder.pid) == ("failover", os.getpid())
    assert [
        e["event"] for e in logs if e["event"] in {"etcd.lock.acquire", "etcd.lock.release"}
    ] == [
        "etcd.lock.acquire",
        "etcd.lock.release",
    ]


async def test_second_holder_waits_until_the_first_releases_and_gets_a_larger_token() -> None:
    store = FakeEtcdStore()
    with anyio.fail_after(3):
        async with (
            EtcdLock(store, KEY, ttl=TTL, holder="one") as first,
            EtcdLock(store, KEY, ttl=TTL, holder="two") as second,
        ):
            token1 = await first.acquire()
            with anyio.move_on_after(0.2) as waited:
                await second.acquire()
            assert waited.cancelled_caught
            assert not second.held
            await first.release()
            token2 = await second.acquire()
            assert token2 > token1


async def test_cancelled_acquire_never_holds_and_leaves_no_lease_behind() -> None:
    store = FakeEtcdStore()
    with anyio.fail_after(3):
        async with (
            EtcdLock(store, KEY, ttl=TTL, holder="one") as first,
            EtcdLock(store, KEY, ttl=TTL, holder="two") as second,
        ):
            await first.acquire()
            with pytest.raises(TimeoutError), anyio.fail_after(0.2):
                await second.acquire()
            assert not second.held
            assert second.fencing_token is None
            current = await store.get(KEY)
            assert current is not None
            assert current.value.startswith(b'{"acquired_at"')
            assert len(store._leases) == 1  # only the holder's lease remains


async def test_a_lost_lease_sets_lost_and_cancels_registered_scopes() -> None:
    store = FakeEtcdStore()
    with capture_logs() as logs, anyio.fail_after(3):
        async with EtcdLock(store, KEY, ttl=timedelta(seconds=1), holder="x") as lock:
            await lock.acquire()
            assert lock._lease is not None
            with anyio.CancelScope() as critical:
                lock.cancel_on_loss(critical)
                store.expire_lease(lock._lease.id)
                await lock.lost.wait()
                await anyio.sleep_forever()  # the critical section, cut short
            assert critical.cancelled_caught
            assert not is_held(lock)
    assert any(e["event"] == "etcd.lock.lost" for e in logs)


async def test_keepalive_refreshes_the_lease_while_held() -> None:
    store = FakeEtcdStore()
    refreshed: list[int] = []
    real_keepalive = store.keepalive_lease

    async def counting(lease_id: int) -> timedelta:
        refreshed.append(lease_id)
        return await real_keepalive(lease_id)

    store.keepalive_lease = counting  # type: ignore[method-assign]  # observe the fake
    with anyio.fail_after(3):
        async with EtcdLock(store, KEY, ttl=timedelta(seconds=1), holder="x") as lock:
            await lock.acquire()
            await eventually(lambda: _at_least(refreshed, 2))
            assert lock.held


async def test_an_unreachable_etcd_past_the_ttl_loses_the_lock() -> None:
    store = FakeEtcdStore()
    with anyio.fail_after(4):
        async with EtcdLock(store, KEY, ttl=timedelta(seconds=1), holder="x") as lock:
            await lock.acquire()
            store.unavailable = True
            await lock.lost.wait()
            assert not lock.held
            store.unavailable = False


async def test_acquire_outside_async_with_is_refused() -> None:
    lock = EtcdLock(FakeEtcdStore(), KEY, ttl=TTL, holder="x")
    with pytest.raises(RuntimeError, match="async with"):
        await lock.acquire()


async def test_acquiring_twice_is_refused() -> None:
    with anyio.fail_after(2):
        async with EtcdLock(FakeEtcdStore(), KEY, ttl=TTL, holder="x") as lock:
            await lock.acquire()
            with pytest.raises(EtcdError, match="already"):
                await lock.acquire()


async def test_status_of_a_free_lock_is_none_and_of_garbage_has_no_holder() -> None:
    store = FakeEtcdStore()
    assert await read_lock_status(store, KEY) is None
    await store.put(KEY, b"legacy")
    status = await read_lock_status(store, KEY)
    assert status is not None
    assert status.holder is None


def is_held(lock: EtcdLock) -> bool:
    return lock.held  # a call, so the type checker does not narrow across awaits


async def _at_least(items: list[int], count: int) -> bool:
    return len(items) >= count
