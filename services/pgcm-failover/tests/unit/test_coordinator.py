from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import anyio
import pytest

from pgcm_common.etcd import KeyValue, Listing
from pgcm_common.records import KeyLayout, ProxyAck, now_utc
from pgcm_failover.coordinator import EtcdCoordinator, default_holder
from pgcm_testkit.fakes.etcd import FakeEtcdStore

LAYOUT = KeyLayout("/pg", "/master")
TTL = timedelta(seconds=2)


def ack(proxy: str, host: str, revision: int) -> bytes:
    return ProxyAck(proxy_id=proxy, host=host, revision=revision, applied_at=now_utc()).to_json()


class RacingStore:
    """A FakeEtcdStore that runs ``after_read`` once, right after the first read of ``key``.

    It stands for another writer changing etcd between our read and our watch.
    """

    def __init__(
        self, inner: FakeEtcdStore, key: bytes, after_read: Callable[[], Awaitable[None]]
    ) -> None:
        self._inner = inner
        self._key = key
        self._after_read: Callable[[], Awaitable[None]] | None = after_read

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def _hook(self, key: bytes) -> None:
        if key == self._key and self._after_read is not None:
            after, self._after_read = self._after_read, None
            await after()

    async def get(self, key: bytes) -> KeyValue | None:
        result = await self._inner.get(key)
        await self._hook(key)
        return result

    async def get_prefix(self, prefix: bytes) -> Listing:
        result = await self._inner.get_prefix(prefix)
        await self._hook(prefix)
        return result


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
        assert coordinator.gone_proxies == ("gone",)  # reported late by the pipeline


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


async def test_wait_for_primary_sees_a_write_right_after_its_read() -> None:
    inner = FakeEtcdStore()

    async def promote() -> None:
        await inner.put(LAYOUT.master, b"10.0.0.12")

    store = RacingStore(inner, LAYOUT.master, promote)
    # RacingStore delegates the rest of EtcdStore through __getattr__, which mypy does
    # not count towards a Protocol.
    async with EtcdCoordinator(store, LAYOUT, lock_ttl=TTL) as coordinator:  # type: ignore[arg-type]
        with anyio.fail_after(5):
            await coordinator.wait_for_primary("10.0.0.12")
    assert coordinator.primary_revision == inner.revision


async def test_an_ack_deleted_during_a_compaction_gap_is_no_longer_waited_for() -> None:
    inner = FakeEtcdStore()
    revision = await inner.put(LAYOUT.master, b"10.0.0.12")
    await inner.put(LAYOUT.proxy_ack("gone"), ack("gone", "10.0.0.11", 1))
    await inner.put(LAYOUT.proxy_ack("app1"), ack("app1", "10.0.0.11", 1))

    async def vanish_and_compact() -> None:
        # Between our listing and our watch: the proxy goes away and the history of
        # that deletion is compacted, so the watch can only re-list.
        await inner.delete(LAYOUT.proxy_ack("gone"))
        await inner.compact(await inner.put(b"/other", b"x"))

    store = RacingStore(inner, LAYOUT.proxies_prefix, vanish_and_compact)
    # RacingStore delegates the rest of EtcdStore through __getattr__, which mypy does
    # not count towards a Protocol.
    async with EtcdCoordinator(store, LAYOUT, lock_ttl=TTL) as coordinator:  # type: ignore[arg-type]
        with anyio.fail_after(5):
            await coordinator.wait_for_primary("10.0.0.12")
        result: list[str] = []

        async def wait() -> None:
            result.extend(await coordinator.wait_for_proxy_acks("10.0.0.12"))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await anyio.wait_all_tasks_blocked()
                assert result == []
                await inner.put(LAYOUT.proxy_ack("app1"), ack("app1", "10.0.0.12", revision))
    assert result == ["app1"]
