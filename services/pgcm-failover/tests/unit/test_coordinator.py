from __future__ import annotations

from datetime import timedelta

import anyio
import pytest

from pgcm_common.records import KeyLayout, ProxyAck, now_utc
from pgcm_failover.coordinator import EtcdCoordinator, default_holder
from pgcm_testkit.fakes.etcd import FakeEtcdStore

LAYOUT = KeyLayout("/pg", "/master")
TTL = timedelta(seconds=2)


def ack(proxy: str, host: str, revision: int) -> bytes:
    return ProxyAck(proxy_id=proxy, host=host, revision=revision, applied_at=now_utc()).to_json()


def test_holder_identity_names_the_tool_and_host() -> None:
    assert default_holder().startswith("pgcm-failover@")


async def test_second_coordinator_waits_for_the_lock_until_released() -> None:
    store = FakeEtcdStore()
    async with (
        EtcdCoordinator(store, LAYOUT, lock_ttl=TTL, holder="a") as first,
        EtcdCoordinator(store, LAYOUT, lock_ttl=TTL, holder="b") as second,
    ):
        with anyio.fail_after(5):
            await first.acquire_lock()
        assert (await store.get(LAYOUT.lock)) is not None
        with anyio.move_on_after(0.2) as blocked:
            await second.acquire_lock()
        assert blocked.cancelled_caught
        await first.release_lock()
        with anyio.fail_after(5):
            await second.acquire_lock()
        assert second.lock.held


async def test_wait_for_primary_returns_when_etcd_names_the_address() -> None:
    store = FakeEtcdStore()
    await store.put(LAYOUT.master, b"10.0.0.11")
    async with EtcdCoordinator(store, LAYOUT, lock_ttl=TTL) as coordinator:
        async with anyio.create_task_group() as tg:
            done = anyio.Event()

            async def wait() -> None:
                await coordinator.wait_for_primary("10.0.0.12")
                done.set()

            tg.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            assert not done.is_set()
            revision = await store.put(LAYOUT.master, b"10.0.0.12")
            with anyio.fail_after(5):
                await done.wait()
        assert coordinator.primary_revision == revision


async def test_acks_must_name_the_address_at_or_after_the_primary_write() -> None:
    store = FakeEtcdStore()
    await store.put(LAYOUT.proxy_ack("app1"), ack("app1", "10.0.0.11", 1))
    await store.put(LAYOUT.proxy_ack("n1"), ack("n1", "10.0.0.11", 1))
    revision = await store.put(LAYOUT.master, b"10.0.0.12")
    async with EtcdCoordinator(store, LAYOUT, lock_ttl=TTL) as coordinator:
        with anyio.fail_after(5):
            await coordinator.wait_for_primary("10.0.0.12")
        result: list[str] = []

        async def wait() -> None:
            result.extend(await coordinator.wait_for_proxy_acks("10.0.0.12"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            # Right host, but an older revision: not yet applied the write we wait for.
            await store.put(LAYOUT.proxy_ack("app1"), ack("app1", "10.0.0.12", revision - 1))
            await store.put(LAYOUT.proxy_ack("n1"), ack("n1", "10.0.0.12", revision))
            await anyio.wait_all_tasks_blocked()
            assert result == []
            await store.put(LAYOUT.proxy_ack("app1"), ack("app1", "10.0.0.12", revision))
        assert result == ["app1", "n1"]


async def test_a_vanished_proxy_is_no_longer_waited_for() -> None:
    store = FakeEtcdStore()
    lease = await store.grant_lease(timedelta(seconds=5))
    await store.put(LAYOUT.proxy_ack("gone"), ack("gone", "10.0.0.11", 1), lease=lease.id)
    revision = await store.put(LAYOUT.master, b"10.0.0.12")
    await store.put(LAYOUT.proxy_ack("app1"), ack("app1", "10.0.0.12", revision))
    async with EtcdCoordinator(store, LAYOUT, lock_ttl=TTL) as coordinator:
        with anyio.fail_after(5):
            await coordinator.wait_for_primary("10.0.0.12")
        async with anyio.create_task_group() as tg:
            result: list[str] = []

            async def wait() -> None:
                result.extend(await coordinator.wait_for_proxy_acks("10.0.0.12"))

            tg.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            assert result == []
            store.expire_lease(lease.id)
        assert result == ["app1"]


async def test_no_proxies_at_all_returns_an_empty_list() -> None:
    store = FakeEtcdStore()
    await store.put(LAYOUT.master, b"10.0.0.12")
    async with EtcdCoordinator(store, LAYOUT, lock_ttl=TTL) as coordinator:
        with anyio.fail_after(5):
            await coordinator.wait_for_primary("10.0.0.12")
            assert await coordinator.wait_for_proxy_acks("10.0.0.12") == []


async def test_an_unreadable_ack_keeps_its_proxy_pending() -> None:
    store = FakeEtcdStore()
    await store.put(LAYOUT.master, b"10.0.0.12")
    await store.put(LAYOUT.proxy_ack("broken"), b"not json")
    async with EtcdCoordinator(store, LAYOUT, lock_ttl=TTL) as coordinator:
        with anyio.move_on_after(0.2) as scope:
            await coordinator.wait_for_proxy_acks("10.0.0.12")
    assert scope.cancelled_caught


def test_coordinator_outside_async_with_refuses() -> None:
    coordinator = EtcdCoordinator(FakeEtcdStore(), LAYOUT, lock_ttl=TTL)
    with pytest.raises(RuntimeError, match="async with"):
        _ = coordinator.lock
