"""A frozen (SIGSTOPped) member of a 3-member cluster costs a short time once.

The kernel keeps accepting a frozen member's connections and buffering our requests,
so nothing fails: only time tells. Every test here gives the client settings in which
the old behaviour (wait for the request or the keepalive ping to time out) takes 20 s
or more, and bounds the new behaviour (hedged reads, probed writes) well below that.
"""

from __future__ import annotations

from datetime import timedelta

import anyio
import pytest
from structlog.testing import capture_logs

from pgcm_common.etcd import Absent, GatewayStore, KeyValue, open_etcd, watch_keys
from pgcm_testkit.etcd import EtcdCluster, random_key

pytestmark = pytest.mark.integration

# Without hedging, a request on the frozen member would wait ~20 s (keepalive ping
# timeout) or 30 s (request timeout); the bound below is far from both.
SLOW_DETECTION = {
    "request_timeout": timedelta(seconds=30),
    "keepalive_timeout": timedelta(seconds=20),
    "dial_timeout": timedelta(seconds=10),
    "hedge_delay": timedelta(milliseconds=300),
}
BOUND_S = 10


async def _connected_to_first(store: GatewayStore, cluster: EtcdCluster, key: bytes) -> None:
    await store.put(key, b"before")
    assert store.endpoint.port == cluster.members[0].client_port


async def test_reads_are_answered_by_another_member_when_the_one_in_use_is_frozen(
    etcd_cluster: EtcdCluster,
) -> None:
    first = etcd_cluster.members[0]
    key = random_key("frozen-read")
    async with open_etcd(etcd_cluster.settings(**SLOW_DETECTION)) as store:
        with anyio.fail_after(60):
            await _connected_to_first(store, etcd_cluster, key)
            lease = await store.grant_lease(timedelta(seconds=30))
            async with etcd_cluster.frozen(first):
                with capture_logs() as logs, anyio.fail_after(BOUND_S):
                    kv = await store.get(key)
                    listing = await store.get_prefix(key)
                    ttl = await store.keepalive_lease(lease.id)
                assert kv is not None
                assert kv.value == b"before"
                assert [item.key for item in listing.items] == [key]
                assert ttl > timedelta(0)
                # The store remembered who answered: later calls go there.
                assert store.endpoint.port != first.client_port
                assert any(e["event"] == "etcd.endpoint.failover" for e in logs)
            await store.revoke_lease(lease.id)


async def test_writes_move_on_when_the_member_in_use_is_frozen(
    etcd_cluster: EtcdCluster,
) -> None:
    first = etcd_cluster.members[0]
    key = random_key("frozen-write")
    async with open_etcd(etcd_cluster.settings(**SLOW_DETECTION)) as store:
        with anyio.fail_after(60):
            await _connected_to_first(store, etcd_cluster, key)
            async with etcd_cluster.frozen(first):
                with anyio.fail_after(BOUND_S):
                    revision = await store.put(key, b"after")
                    lease = await store.grant_lease(timedelta(seconds=30))
                    created = await store.put_if(key + b"/new", b"x", Absent(), lease=lease.id)
                assert store.endpoint.port != first.client_port
                kv = await store.get(key)
            assert created
            assert kv is not None
            assert (kv.value, kv.mod_revision) == (b"after", revision)
            await store.revoke_lease(lease.id)


async def test_a_new_store_whose_first_endpoint_is_frozen_answers_reads_and_writes(
    etcd_cluster: EtcdCluster,
) -> None:
    first = etcd_cluster.members[0]
    key = random_key("frozen-cold")
    with anyio.fail_after(60):
        async with (
            etcd_cluster.frozen(first),
            open_etcd(etcd_cluster.settings(**SLOW_DETECTION)) as store,
        ):
            with anyio.fail_after(BOUND_S):
                assert await store.get(key) is None
            with anyio.fail_after(BOUND_S):
                await store.put(key, b"1")
            assert store.endpoint.port != first.client_port


async def test_a_watch_on_a_frozen_member_follows_the_store_to_the_member_that_answered(
    etcd_cluster: EtcdCluster,
) -> None:
    first = etcd_cluster.members[0]
    key = random_key("frozen-watch")
    others = etcd_cluster.settings(endpoints=etcd_cluster.endpoints[1:])
    async with (
        open_etcd(etcd_cluster.settings(**SLOW_DETECTION)) as store,
        open_etcd(others) as writer,
    ):
        with anyio.fail_after(60):
            await _connected_to_first(store, etcd_cluster, key)
            async with watch_keys(store, key, 0) as events:
                await store.put(key, b"1")
                assert isinstance(await events.receive(), KeyValue)
                async with etcd_cluster.frozen(first):
                    await writer.put(key, b"2")
                    with anyio.fail_after(BOUND_S):
                        # A read moves the store; closing the frozen connection ends
                        # the watch stream on it, and the watch resumes elsewhere.
                        await store.get(key)
                        event = await events.receive()
    assert isinstance(event, KeyValue)
    assert event.value == b"2"


async def test_an_idle_watch_on_a_frozen_member_recovers_within_the_keepalive_bound(
    etcd_cluster: EtcdCluster,
) -> None:
    # Default keepalive: a ping every 6 s, 2 s to answer, so a frozen member is noticed
    # within 8 s even when nothing else uses the store.
    first = etcd_cluster.members[0]
    key = random_key("frozen-idle-watch")
    others = etcd_cluster.settings(endpoints=etcd_cluster.endpoints[1:])
    async with open_etcd(etcd_cluster.settings()) as store, open_etcd(others) as writer:
        with anyio.fail_after(60):
            await _connected_to_first(store, etcd_cluster, key)
            async with watch_keys(store, key, 0) as events:
                await store.put(key, b"1")
                assert isinstance(await events.receive(), KeyValue)
                async with etcd_cluster.frozen(first):
                    await writer.put(key, b"2")
                    with anyio.fail_after(15):
                        event = await events.receive()
    assert isinstance(event, KeyValue)
    assert event.value == b"2"
