"""A 3-member cluster: the client keeps working when the member it uses dies or hangs."""

from __future__ import annotations

from datetime import timedelta

import anyio
import pytest

from pgcm_common.etcd import EtcdUnavailable, GatewayStore, KeyValue, open_etcd, watch_keys
from pgcm_testkit.etcd import EtcdCluster, random_key
from pgcm_testkit.eventually import eventually

pytestmark = pytest.mark.integration


FAST = {"request_timeout": timedelta(seconds=2), "dial_timeout": timedelta(seconds=1)}


# Both transports of the client (etcd.transport) must fail over alike.
@pytest.fixture(params=["gateway", "grpc"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_client_fails_over_when_its_member_is_stopped(
    etcd_cluster: EtcdCluster, transport: str
) -> None:
    first = etcd_cluster.members[0]
    key = random_key("cluster-stop")
    async with open_etcd(etcd_cluster.settings(**FAST, transport=transport)) as store:
        with anyio.fail_after(30):
            await store.put(key, b"1")
            assert store.endpoint.port == first.client_port
            async with watch_keys(store, key, 0) as events:
                await anyio.to_thread.run_sync(first.stop)
                try:
                    # A leader election may be under way: the cluster needs a moment.
                    await eventually(lambda: _put_succeeds(store, key, b"2"))
                    assert store.endpoint.port != first.client_port
                    event = await events.receive()
                    assert isinstance(event, KeyValue)
                    assert event.value == b"2"
                finally:
                    await anyio.to_thread.run_sync(first.start)


async def test_client_fails_over_when_its_member_hangs(
    etcd_cluster: EtcdCluster, transport: str
) -> None:
    first = etcd_cluster.members[0]
    key = random_key("cluster-hang")
    async with open_etcd(etcd_cluster.settings(**FAST, transport=transport)) as store:
        with anyio.fail_after(30):
            await store.put(key, b"1")
            assert store.endpoint.port == first.client_port
            await anyio.to_thread.run_sync(first.freeze)
            try:
                with anyio.fail_after(10):
                    await eventually(lambda: _put_succeeds(store, key, b"2"))
                kv = await store.get(key)
                assert kv is not None
                assert kv.value == b"2"
            finally:
                await anyio.to_thread.run_sync(first.thaw)
            await anyio.to_thread.run_sync(_wait_healthy, etcd_cluster)


def _wait_healthy(cluster: EtcdCluster) -> None:
    for member in cluster.members:
        member.process.wait_ready(member.healthy, deadline_s=15)


async def _put_succeeds(store: GatewayStore, key: bytes, value: bytes) -> bool:
    try:
        await store.put(key, value)
    except EtcdUnavailable:
        return False
    return True
