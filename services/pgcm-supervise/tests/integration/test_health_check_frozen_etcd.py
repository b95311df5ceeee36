"""health_check answers within the caller's deadline when an etcd member is frozen."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from grpclib.client import Channel
from grpclib.testing import ChannelFor

from pgcm_common.etcd import EtcdSettings, open_etcd
from pgcm_common.pacemaker import StaticNodeAddresses
from pgcm_common.proto.failover import Empty, FailoverStub, HealthCheckResponseStatus
from pgcm_supervise.grpc_serve import GrpcServerOptions, serve_grpc
from pgcm_supervise.pacemaker_control import FakePacemakerControl
from pgcm_supervise.server import EtcdProbe, FailoverServer, FailoverServerOptions, SystemClock
from pgcm_testkit.etcd import EtcdCluster, random_key
from pgcm_testkit.fakes.pacemaker import FakeCrmMonReader, state_from_file
from pgcm_testkit.fakes.pgbouncer import FakePgBouncerAdmin

pytestmark = pytest.mark.integration

FIXTURE = (
    Path(__file__).parents[4]
    / "libs/pgcm-common/tests/fixtures/pacemaker/01-healthy-n1-primary.xml"
)
# pgcm-failover's default health-check deadline.
CALLER_DEADLINE_S = 2.0
# Settings in which the old client waited ~20-30 s on a frozen member.
SLOW_DETECTION = {
    "request_timeout": timedelta(seconds=30),
    "keepalive_timeout": timedelta(seconds=20),
    "dial_timeout": timedelta(seconds=10),
}


def _server(etcd_probe: EtcdProbe) -> FailoverServer:
    crm = FakeCrmMonReader(state_from_file(FIXTURE, resource_id="pgsqld"))
    return FailoverServer(
        [FakePgBouncerAdmin()],
        crm,
        FakePacemakerControl(),
        addresses=StaticNodeAddresses({"n2": "10.0.0.2"}),
        etcd_probe=etcd_probe,
        clock=SystemClock(),
        # A probe bound longer than the caller's deadline: only the deadline keeps the
        # answer in time.
        options=FailoverServerOptions(health_timeout=timedelta(seconds=10)),
    )


@asynccontextmanager
async def serving(settings: EtcdSettings, key: bytes) -> AsyncIterator[FailoverStub]:
    async with open_etcd(settings) as store:

        async def etcd_probe() -> object:
            return await store.get(key)

        await store.put(key, b"primary")  # connects to the first endpoint
        async with _server(etcd_probe) as api, anyio.create_task_group() as tg:
            port = await tg.start(serve_grpc, [api], GrpcServerOptions(port=0))
            channel = Channel("127.0.0.1", port)
            try:
                yield FailoverStub(channel)
            finally:
                channel.close()
                tg.cancel_scope.cancel()


@asynccontextmanager
async def frozen_while_serving(
    cluster: EtcdCluster, settings: EtcdSettings, key: bytes
) -> AsyncIterator[FailoverStub]:
    """Serve, then freeze the first member; stop serving BEFORE the member is thawed.

    grpclib's server does not close the connections it accepted when it stops; the
    client's close reaches it a loop iteration later. Thawing (seconds, in a worker
    thread) after the server stopped keeps the test's event loop running meanwhile, so
    that connection is closed before the loop is; otherwise its socket was collected,
    unclosed, during a later test and failed it with a ResourceWarning.
    """
    async with AsyncExitStack() as thaw_last, serving(settings, key) as stub:
        await thaw_last.enter_async_context(cluster.frozen(cluster.members[0]))
        yield stub


async def test_health_check_is_healthy_within_its_deadline_when_one_etcd_member_is_frozen(
    etcd_cluster: EtcdCluster,
) -> None:
    key = random_key("health-frozen")
    with anyio.fail_after(60):
        async with frozen_while_serving(
            etcd_cluster, etcd_cluster.settings(**SLOW_DETECTION), key
        ) as stub:
            with anyio.fail_after(10):
                response = await stub.health_check(Empty(), timeout=CALLER_DEADLINE_S)
    assert response.status is HealthCheckResponseStatus.HEALTHY, response.reasons


async def test_health_check_reports_etcd_unhealthy_in_time_when_no_member_answers(
    etcd_cluster: EtcdCluster,
) -> None:
    only_first = etcd_cluster.settings(endpoints=etcd_cluster.endpoints[:1], **SLOW_DETECTION)
    key = random_key("health-all-frozen")
    with anyio.fail_after(60):
        async with frozen_while_serving(etcd_cluster, only_first, key) as stub:
            with anyio.fail_after(10):
                response = await stub.health_check(Empty(), timeout=CALLER_DEADLINE_S)
    assert response.status is HealthCheckResponseStatus.UNHEALTHY
    assert [r for r in response.reasons if r.startswith("etcd: no answer within")]


async def test_health_check_answers_unhealthy_before_a_short_deadline_when_a_probe_hangs() -> None:
    async def hanging_probe() -> object:
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover - never reached

    async with _server(hanging_probe) as api, ChannelFor([api]) as channel:
        with anyio.fail_after(10):
            response = await FailoverStub(channel).health_check(Empty(), timeout=1.0)
    assert response.status is HealthCheckResponseStatus.UNHEALTHY
    assert any(r.startswith("etcd: no answer within") for r in response.reasons)
