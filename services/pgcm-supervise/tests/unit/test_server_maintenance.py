"""``set_maintenance``: Pacemaker's maintenance mode through the failover API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.testing import ChannelFor
from structlog.testing import capture_logs

from pgcm_common.pacemaker import PacemakerCommandFailed, StaticNodeAddresses
from pgcm_common.proto.failover import FailoverStub, MaintenanceRequest
from pgcm_supervise.maintenance import MAX_REASON_LENGTH, FakeMaintenanceControl
from pgcm_supervise.pacemaker_control import FakePacemakerControl
from pgcm_supervise.server import FailoverServer, FailoverServerOptions, SystemClock
from pgcm_testkit.fakes.pacemaker import FakeCrmMonReader, state_from_file
from pgcm_testkit.fakes.pgbouncer import FakePgBouncerAdmin

FIXTURE = (
    Path(__file__).parents[4]
    / "libs/pgcm-common/tests/fixtures/pacemaker/01-healthy-n1-primary.xml"
)


@asynccontextmanager
async def serving(control: FakeMaintenanceControl | None) -> AsyncIterator[FailoverStub]:
    server = FailoverServer(
        [FakePgBouncerAdmin()],
        FakeCrmMonReader(state_from_file(FIXTURE, resource_id="pgsqld")),
        FakePacemakerControl(),
        addresses=StaticNodeAddresses({"n1": "10.0.0.1"}),
        etcd_probe=anyio.lowlevel.checkpoint,
        clock=SystemClock(),
        options=FailoverServerOptions(pacemaker_timeout=timedelta(seconds=2), maintenance=control),
    )
    async with server, ChannelFor([server]) as channel:
        yield FailoverStub(channel)


async def test_maintenance_on_and_off_sets_the_cluster_property_and_logs_who_and_why() -> None:
    control = FakeMaintenanceControl()
    with anyio.fail_after(5), capture_logs() as logs:
        async with serving(control) as stub:
            on = await stub.set_maintenance(
                MaintenanceRequest(enabled=True, reason="kernel update", requested_by="ops@h")
            )
            assert control.enabled
            off = await stub.set_maintenance(MaintenanceRequest(enabled=False))
    assert (on.enabled, off.enabled) == (True, False)
    assert control.calls == [True, False]
    [first, _second] = [e for e in logs if e["event"] == "pacemaker.maintenance"]
    assert first["reason"] == "'kernel update'"
    assert first["requested_by"] == "'ops@h'"


@pytest.mark.parametrize("field", ["reason", "requested_by"])
async def test_a_reason_or_requester_longer_than_the_bound_is_refused(field: str) -> None:
    control = FakeMaintenanceControl()
    request = MaintenanceRequest(enabled=True, **{field: "x" * (MAX_REASON_LENGTH + 1)})
    with anyio.fail_after(5):
        async with serving(control) as stub:
            with pytest.raises(GRPCError) as caught:
                await stub.set_maintenance(request)
    assert caught.value.status is Status.INVALID_ARGUMENT
    assert field in (caught.value.message or "")
    assert control.calls == []


async def test_a_reason_at_the_bound_is_accepted() -> None:
    control = FakeMaintenanceControl()
    with anyio.fail_after(5):
        async with serving(control) as stub:
            await stub.set_maintenance(
                MaintenanceRequest(enabled=True, reason="x" * MAX_REASON_LENGTH)
            )
    assert control.calls == [True]


async def test_without_a_maintenance_control_the_rpc_fails_its_precondition() -> None:
    with anyio.fail_after(5):
        async with serving(None) as stub:
            with pytest.raises(GRPCError) as caught:
                await stub.set_maintenance(MaintenanceRequest(enabled=True))
    assert caught.value.status is Status.FAILED_PRECONDITION


async def test_a_failing_crm_attribute_answers_unavailable() -> None:
    control = FakeMaintenanceControl()
    control.error = PacemakerCommandFailed(("crm_attribute",), 1, "not connected")
    with anyio.fail_after(5):
        async with serving(control) as stub:
            with pytest.raises(GRPCError) as caught:
                await stub.set_maintenance(MaintenanceRequest(enabled=True))
    assert caught.value.status is Status.UNAVAILABLE
    assert not control.enabled
