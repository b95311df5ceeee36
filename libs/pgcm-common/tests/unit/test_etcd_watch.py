from __future__ import annotations

from collections.abc import Mapping, Sequence

import anyio
import pytest
from structlog.testing import capture_logs

from pgcm_common.etcd import KeyValue, WatchEvent, follow_keys, watch_keys
from pgcm_testkit.eventually import eventually
from pgcm_testkit.fakes.etcd import FakeEtcdStore


async def receive(
    events: anyio.abc.ObjectReceiveStream[WatchEvent], count: int
) -> list[WatchEvent]:
    with anyio.fail_after(2):
        return [await events.receive() for _ in range(count)]


def summary(events: list[WatchEvent]) -> list[tuple[str, bytes, bytes | None]]:
    return [
        ("put", e.key, e.value) if isinstance(e, KeyValue) else ("del", e.key, None) for e in events
    ]


async def test_watch_keys_delivers_puts_and_deletes_under_a_prefix_in_order() -> None:
    store = FakeEtcdStore()
    await store.put(b"/other", b"x")
    with anyio.fail_after(2):
        async with watch_keys(store, b"/ns/", 0, prefix=True) as events:
            await store.put(b"/ns/a", b"1")
            await store.put(b"/other", b"y")
            await store.delete(b"/ns/a")
            got = await receive(events, 2)
    assert summary(got) == [("put", b"/ns/a", b"1"), ("del", b"/ns/a", None)]


async def test_watch_keys_on_one_key_ignores_keys_sharing_its_prefix() -> None:
    store = FakeEtcdStore()
    with anyio.fail_after(2):
        async with watch_keys(store, b"/ns/master", 0) as events:
            await store.put(b"/ns/master-record", b"no")
            await store.put(b"/ns/master", b"10.0.0.1")
            got = await receive(events, 1)
    assert summary(got) == [("put", b"/ns/master", b"10.0.0.1")]


async def test_watch_keys_replays_from_start_revision() -> None:
    store = FakeEtcdStore()
    first = await store.put(b"/k", b"1")
    await store.put(b"/k", b"2")
    with anyio.fail_after(2):
        async with watch_keys(store, b"/k", first + 1) as events:
            got = await receive(events, 1)
    assert summary(got) == [("put", b"/k", b"2")]


async def test_watch_keys_rewatches_after_a_broken_stream_without_loss_or_replay() -> None:
    store = FakeEtcdStore()
    with capture_logs() as logs, anyio.fail_after(5):
        async with watch_keys(store, b"/k", 0) as events:
            await store.put(b"/k", b"1")
            assert summary(await receive(events, 1)) == [("put", b"/k", b"1")]
            store.unavailable = True
            store.break_watches()
            await eventually(lambda: _logged(logs, "etcd.watch.error"))
            store.unavailable = False
            await store.put(b"/k", b"2")  # happens while no watch is open
            await store.put(b"/k", b"3")
            got = await receive(events, 2)
            await eventually(lambda: _logged(logs, "etcd.watch.restart"))
    assert summary(got) == [("put", b"/k", b"2"), ("put", b"/k", b"3")]


async def test_watch_keys_backs_off_with_capped_jittered_growing_delays() -> None:
    store = FakeEtcdStore()
    with capture_logs() as logs, anyio.fail_after(5):
        async with watch_keys(store, b"/k", 0):
            store.unavailable = True
            store.break_watches()
            await eventually(lambda: _at_least(_errors(logs), 3))
            store.unavailable = False
    attempts = [(e["attempt"], float(str(e["retry_in"]))) for e in _errors(logs)][:3]
    assert [attempt for attempt, _ in attempts] == [1, 2, 3]
    # Full jitter below a cap that doubles from 0.2 s (never under half the first delay):
    # proxies that lost the same etcd member do not come back in lock step.
    caps = [0.2, 0.4, 0.8]
    assert all(0.1 <= delay <= cap for (_, delay), cap in zip(attempts, caps, strict=True))


async def _at_least(entries: Sequence[object], count: int) -> bool:
    return len(entries) >= count


def _errors(logs: Sequence[Mapping[str, object]]) -> list[Mapping[str, object]]:
    return [entry for entry in logs if entry["event"] == "etcd.watch.error"]


async def test_watch_keys_relists_after_compaction_and_reports_vanished_keys() -> None:
    store = FakeEtcdStore()
    await store.put(b"/ns/a", b"1")
    await store.put(b"/ns/gone", b"x")
    with capture_logs() as logs, anyio.fail_after(5):
        async with watch_keys(store, b"/ns/", 0, prefix=True) as events:
            # Seen before the break: a and gone.
            await store.put(b"/ns/a", b"2")
            await store.put(b"/ns/gone", b"y")
            assert len(await receive(events, 2)) == 2
            store.unavailable = True
            store.break_watches()
            await eventually(lambda: _logged(logs, "etcd.watch.error"))
            store.unavailable = False
            # While no watch is open: a changes, gone is deleted, history is compacted.
            await store.put(b"/ns/a", b"3")
            await store.delete(b"/ns/gone")
            await store.put(b"/ns/new", b"n")
            await store.compact(store.revision)
            got = await receive(events, 3)
            assert _logged_now(logs, "etcd.watch.compacted")
    assert summary(got) == [
        ("put", b"/ns/a", b"3"),
        ("put", b"/ns/new", b"n"),
        ("del", b"/ns/gone", None),
    ]


async def test_leaving_watch_keys_closes_the_watch() -> None:
    store = FakeEtcdStore()
    with anyio.fail_after(2):
        async with watch_keys(store, b"/k", 0):
            assert store.open_watches == 1
    assert store.open_watches == 0


async def test_watch_keys_stops_quietly_when_the_consumer_closes_the_stream() -> None:
    store = FakeEtcdStore()
    with anyio.fail_after(2):
        async with watch_keys(store, b"/k", 0, buffer=0) as events:
            await events.aclose()
            await store.put(b"/k", b"1")
            await eventually(lambda: _no_watches(store))


async def _no_watches(store: FakeEtcdStore) -> bool:
    return store.open_watches == 0


async def _logged(logs: Sequence[Mapping[str, object]], event: str) -> bool:
    return _logged_now(logs, event)


def _logged_now(logs: Sequence[Mapping[str, object]], event: str) -> bool:
    return any(entry["event"] == event for entry in logs)


async def test_follow_keys_delivers_in_order_in_the_callers_own_task() -> None:
    store = FakeEtcdStore()
    first = await store.put(b"/k", b"1")
    await store.delete(b"/k")
    await store.put(b"/k", b"2")
    got: list[WatchEvent] = []
    delivering_tasks: set[int] = set()
    with anyio.fail_after(2), anyio.CancelScope() as scope:

        async def deliver(event: WatchEvent) -> None:
            delivering_tasks.add(anyio.get_current_task().id)
            got.append(event)
            if len(got) == 3:
                scope.cancel()

        await follow_keys(store, b"/k", first, deliver)
    assert summary(got) == [("put", b"/k", b"1"), ("del", b"/k", None), ("put", b"/k", b"2")]
    assert delivering_tasks == {anyio.get_current_task().id}  # no hand-over to another task


async def test_follow_keys_raises_what_the_callback_raises() -> None:
    store = FakeEtcdStore()
    revision = await store.put(b"/k", b"1")

    async def refuse(event: WatchEvent) -> None:
        raise ValueError(f"refused {event.key!r}")

    with anyio.fail_after(2), pytest.raises(ValueError, match="refused b'/k'"):
        await follow_keys(store, b"/k", revision, refuse)
