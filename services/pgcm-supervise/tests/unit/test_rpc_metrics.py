"""The failover API's metrics: calls by method and status, and each method's last failure."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import anyio
import prometheus_client  # first import outside the loop (blockbuster): metrics load it lazily
import pytest
from grpclib import GRPCError
from grpclib.client import Channel

from pgcm_common.pacemaker import StaticNodeAddresses
from pgcm_common.proto.failover import Empty, FailoverStub, MigrateRequest
from pgcm_supervise.grpc_serve import GrpcServerOptions, serve_grpc
from pgcm_supervise.pacemaker_control import FakePacemakerControl
from pgcm_supervise.server import FailoverServer, SystemClock
from pgcm_testkit.fakes.pacemaker import FakeCrmMonReader, state_from_file
from pgcm_testkit.fakes.pgbouncer import FakePgBouncerAdmin

FIXTURE: Final = (
    Path(__file__).parents[4]
    / "libs/pgcm-common/tests/fixtures/pacemaker/01-healthy-n1-primary.xml"
)


async def test_a_failed_call_records_when_its_method_last_failed() -> None:
    registry = prometheus_client.CollectorRegistry()
    api = FailoverServer(
        [FakePgBouncerAdmin()],
        FakeCrmMonReader(state_from_file(FIXTURE, resource_id="pgsqld")),
        FakePacemakerControl(),
        addresses=StaticNodeAddresses({"n1": "10.0.0.1", "n2": "10.0.0.2", "n3": "10.0.0.3"}),
        etcd_probe=anyio.lowlevel.checkpoint,
        clock=SystemClock(),
    )
    with anyio.fail_after(10):
        async with api, anyio.create_task_group() as tg:
            options = GrpcServerOptions(port=0, registry=registry)
            port = await tg.start(serve_grpc, [api], options)
            channel = Channel("127.0.0.1", port)
            try:
                stub = FailoverStub(channel)
                await stub.health_check(Empty())
                with pytest.raises(GRPCError) as refused:
                    await stub.migrate_to(MigrateRequest(target="no-such-node"))
            finally:
                channel.close()
            tg.cancel_scope.cancel()
    sample = registry.get_sample_value
    status = refused.value.status.name
    assert (
        sample("pgcm_supervise_rpc_requests_total", {"method": "migrate_to", "status": status}) == 1
    )
    assert (
        sample("pgcm_supervise_rpc_requests_total", {"method": "health_check", "status": "OK"}) == 1
    )
    failed_at = sample(
        "pgcm_supervise_rpc_last_failure_timestamp_seconds", {"method": "migrate_to"}
    )
    assert failed_at is not None
    assert failed_at > 1_700_000_000
    assert (
        sample("pgcm_supervise_rpc_last_failure_timestamp_seconds", {"method": "health_check"})
        is None
    )
