from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import anyio
import asyncpg
import pytest
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status

from pgcm_common.etcd import open_etcd
from pgcm_common.pacemaker import StaticNodeAddresses
from pgcm_common.pgbouncer import PgBouncerAdmin
from pgcm_common.proto.failover import (
    Empty,
    FailoverStub,
    HealthCheckResponseStatus,
    PauseRequest,
)
from pgcm_supervise.grpc_serve import GrpcServerOptions, serve_grpc
from pgcm_supervise.pacemaker_control import FakePacemakerControl
from pgcm_supervise.server import FailoverServer, FailoverServerOptions, SystemClock
from pgcm_testkit.etcd import EtcdMember, random_key
from pgcm_testkit.eventually import eventually
from pgcm_testkit.fakes.pacemaker import FakeCrmMonReader, state_from_file
from pgcm_testkit.pgbouncer import PgBouncerServer

pytestmark = pytest.mark.integration

FIXTURE = (
    Path(__file__).parents[4]
    / "libs/pgcm-common/tests/fixtures/pacemaker/01-healthy-n1-primary.xml"
)


@asynccontextmanager
async def serving(pgbouncer: PgBouncerServer, etcd: EtcdMember) -> AsyncIterator[FailoverStub]:
    admin = PgBouncerAdmin(pgbouncer.admin_settings())
    crm = FakeCrmMonReader(state_from_file(FIXTURE, resource_id="pgsqld"))
    async with open_etcd(etcd.settings()) as store:
        probe_key = random_key("health")

        async def etcd_probe() -> None:
            await store.get(probe_key)

        api = FailoverServer(
            [admin],
            crm,
            FakePacemakerControl(),
            addresses=StaticNodeAddresses({"n2": "10.0.0.2", "n3": "10.0.0.3"}),
            etcd_probe=etcd_probe,
            clock=SystemClock(),
            options=FailoverServerOptions(cleanup_timeout=timedelta(seconds=5)),
        )
        async with api, anyio.create_task_group() as tg:
            port = await tg.start(serve_grpc, [api], GrpcServerOptions(port=0))
            channel = Channel("127.0.0.1", port)
            try:
                yield FailoverStub(channel)
            finally:
                channel.close()
                tg.cancel_scope.cancel()


async def query_passes(pgbouncer: PgBouncerServer) -> bool:
    connection = await asyncpg.connect(pgbouncer.client_dsn("app"), statement_cache_size=0)
    try:
        return bool(await connection.fetchval("SELECT 1") == 1)
    finally:
        await connection.close()


@asynccontextmanager
async def open_transaction(pgbouncer: PgBouncerServer) -> AsyncIterator[None]:
    connection = await asyncpg.connect(pgbouncer.client_dsn("app"), statement_cache_size=0)
    try:
        async with connection.transaction():
            await connection.execute("SELECT 1")
            yield
    finally:
        await connection.close()


async def new_query_blocks(pgbouncer: PgBouncerServer) -> bool:
    with anyio.move_on_after(0.5) as scope:
        await query_passes(pgbouncer)
    return scope.cancelled_caught


async def test_health_check_with_real_pgbouncer_and_etcd_is_healthy(
    pgbouncer: PgBouncerServer, etcd: EtcdMember
) -> None:
    with anyio.fail_after(20):
        async with serving(pgbouncer, etcd) as stub:
            response = await stub.health_check(Empty())
    assert response.status is HealthCheckResponseStatus.HEALTHY, response.reasons


async def test_pause_blocked_by_open_transaction_exceeds_deadline_and_resumes(
    pgbouncer: PgBouncerServer, etcd: EtcdMember
) -> None:
    with anyio.fail_after(30):
        async with serving(pgbouncer, etcd) as stub:
            async with open_transaction(pgbouncer):
                with pytest.raises(GRPCError) as caught:
                    await stub.pause(PauseRequest(timeout_ms=300, expiry=60))
            assert caught.value.status is Status.DEADLINE_EXCEEDED
            assert caught.value.message == "exceeded pause timeout"
            assert await query_passes(pgbouncer)


async def test_expiry_resumes_real_pgbouncer(pgbouncer: PgBouncerServer, etcd: EtcdMember) -> None:
    with anyio.fail_after(30):
        async with serving(pgbouncer, etcd) as stub:
            await stub.pause(PauseRequest(timeout=5, expiry_ms=1500))
            assert await new_query_blocks(pgbouncer)
            await eventually(lambda: query_passes(pgbouncer))


async def test_resume_cancels_expiry_and_a_second_pause_outlives_the_first_timer(
    pgbouncer: PgBouncerServer, etcd: EtcdMember
) -> None:
    with anyio.fail_after(30):
        async with serving(pgbouncer, etcd) as stub:
            await stub.pause(PauseRequest(timeout=5, expiry_ms=800))
            await stub.resume(Empty())
            assert await query_passes(pgbouncer)
            await stub.pause(PauseRequest(timeout=5, expiry_ms=800))
            await stub.pause(PauseRequest(timeout=5, expiry=60))
            await anyio.sleep(1.2)  # past the first two timers' expiry
            assert await new_query_blocks(pgbouncer)
            await stub.resume(Empty())
            assert await query_passes(pgbouncer)


async def test_server_exit_while_paused_resumes_pgbouncer(
    pgbouncer: PgBouncerServer, etcd: EtcdMember
) -> None:
    with anyio.fail_after(30):
        async with serving(pgbouncer, etcd) as stub:
            await stub.pause(PauseRequest(timeout=5, expiry=60))
            assert await new_query_blocks(pgbouncer)
        assert await query_passes(pgbouncer)
