"""The watch and the client against a real etcd that restarts and hangs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta

import anyio
import pytest
from structlog.testing import capture_logs

from pgcm_common.etcd import EtcdUnavailable, GatewayStore, KeyValue, open_etcd, watch_keys
from pgcm_testkit.etcd import EtcdMember, random_key
from pgcm_testkit.eventually import eventually

pytestmark = pytest.mark.integration

# The defaults (ping every 6 s, 2 s to answer) notice a hung etcd within 8 s.
HANG_DETECTION_S = 10


# Both transports of the client (etcd.transport) must survive the same failures.
@pytest.fixture(params=["gateway", "grpc"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def store(etcd: EtcdMember, transport: str) -> AsyncIterator[GatewayStore]:
    settings = etcd.settings(
        request_timeout=timedelta(seconds=2),
        dial_timeout=timedelta(seconds=1),
        transport=transport,
    )
    async with open_etcd(settings) as client:
        yield client


def logged(logs: Sequence[Mapping[str, object]], event: str) -> bool:
    return any(entry["event"] == event for entry in logs)


async def test_watch_continues_across_an_etcd_restart(
    etcd: EtcdMember, store: GatewayStore
) -> None:
    key = random_key("restart")
    with capture_logs() as logs, anyio.fail_after(30):
        async with watch_keys(store, key, 0) as events:
            await store.put(key, b"before")
            first = await events.receive()
            await anyio.to_thread.run_sync(etcd.restart)
            await eventually(lambda: _put_succeeds(store, key + b"/probe"))
            await store.put(key, b"after")
            second = await events.receive()
    assert isinstance(first, KeyValue)
    assert isinstance(second, KeyValue)
    assert (first.value, second.value) == (b"before", b"after")
    assert second.mod_revision > first.mod_revision
    assert logged(logs, "etcd.watch.restart")


async def test_watch_replays_what_changed_while_etcd_was_away_exactly_once(
    etcd: EtcdMember, store: GatewayStore
) -> None:
    key = random_key("gap")
    with anyio.fail_after(30):
        async with watch_keys(store, key, 0) as events:
            await store.put(key, b"1")
            assert isinstance(await events.receive(), KeyValue)
            # Write through a second client while the watch's connection is broken.
            await anyio.to_thread.run_sync(etcd.restart)
            async with open_etcd(etcd.settings()) as other:
                await other.put(key, b"2")
                await other.put(key, b"3")
            got = [await events.receive(), await events.receive()]
            await store.put(key, b"4")
            got.append(await events.receive())
    assert [e.value for e in got if isinstance(e, KeyValue)] == [b"2", b"3", b"4"]


async def test_a_sigstopped_etcd_is_detected_within_ten_seconds(
    etcd: EtcdMember, store: GatewayStore
) -> None:
    key = random_key("hang")
    with capture_logs() as logs, anyio.fail_after(40):
        async with watch_keys(store, key, 0) as events:
            await store.put(key, b"before")
            assert isinstance(await events.receive(), KeyValue)
            await anyio.to_thread.run_sync(etcd.freeze)
            try:
                with anyio.fail_after(HANG_DETECTION_S):
                    # The idle watch notices through gRPC keepalive alone...
                    await eventually(lambda: _alogged(logs, "etcd.watch.error"))
                with anyio.fail_after(HANG_DETECTION_S), pytest.raises(EtcdUnavailable):
                    # ...and a request fails instead of hanging.
                    await store.get(key)
            finally:
                await anyio.to_thread.run_sync(etcd.thaw)
            await eventually(lambda: _put_succeeds(store, key + b"/probe"))
            await store.put(key, b"after")
            after = await events.receive()
    assert isinstance(after, KeyValue)
    assert after.value == b"after"


async def _put_succeeds(store: GatewayStore, key: bytes) -> bool:
    try:
        await store.put(key, b"probe")
    except EtcdUnavailable:
        return False
    return True


async def _alogged(logs: Sequence[Mapping[str, object]], event: str) -> bool:
    return logged(logs, event)
