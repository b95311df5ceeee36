"""``maintenance``: a real gRPC call to a supervise double, the record in a real etcd."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest
from grpclib.server import Server

from pgcm_common.etcd import open_etcd
from pgcm_common.proto.failover import FailoverBase, MaintenanceRequest, MaintenanceResponse
from pgcm_common.records import KeyLayout, now_utc
from pgcm_failover.app import Adapters, collect_status
from pgcm_failover.client import SuperviseEndpoint
from pgcm_failover.errors import ClientsFailed
from pgcm_failover.maintenance import maintenance_refusal, read_maintenance, switch_maintenance
from pgcm_failover.settings import FailoverSettings
from pgcm_testkit.etcd import EtcdMember, random_key

pytestmark = pytest.mark.integration


@dataclass
class MaintenanceDouble(FailoverBase):
    """Answers set_maintenance as supervise does; records what it was asked."""

    requests: list[MaintenanceRequest] = field(default_factory=list)

    async def set_maintenance(self, message: MaintenanceRequest) -> MaintenanceResponse:
        self.requests.append(message)
        return MaintenanceResponse(enabled=message.enabled, created_at=now_utc())


@asynccontextmanager
async def serving(double: FailoverBase) -> AsyncIterator[str]:
    server = Server([double])
    await server.start("127.0.0.1", 0)
    try:
        assert isinstance(server._server, asyncio.Server)
        yield f"127.0.0.1:{server._server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        with anyio.move_on_after(5, shield=True):
            await server.wait_closed()


async def test_maintenance_on_and_off_through_grpc_recorded_in_real_etcd(
    etcd: EtcdMember,
) -> None:
    namespace = random_key("maint").decode()
    keys = KeyLayout(namespace, "/master")
    double = MaintenanceDouble()
    async with open_etcd(etcd.settings()) as store, serving(double) as endpoint:
        with SuperviseEndpoint(endpoint) as client, anyio.fail_after(20):
            on = await switch_maintenance(
                [client], store, keys, enabled=True, reason="disk swap", by="ops@h",
                call_timeout_s=5,
            )  # fmt: skip
            stored = await read_maintenance(store, keys)
            assert stored == on.record
            assert maintenance_refusal(stored) is not None
            settings = FailoverSettings(endpoints=[endpoint], cluster={"namespace": namespace})
            status = await collect_status(Adapters(store, [client]), settings)
            assert status.maintenance == on.record
            off = await switch_maintenance(
                [client], store, keys, enabled=False, reason="", by="ops@h", call_timeout_s=5
            )
            assert maintenance_refusal(await read_maintenance(store, keys)) is None
    assert [(r.enabled, r.reason, r.requested_by) for r in double.requests] == [
        (True, "disk swap", "ops@h"),
        (False, "", "ops@h"),
    ]
    assert (on.record.enabled, off.record.enabled) == (True, False)
    assert on.record.endpoint == endpoint


async def test_an_old_supervise_without_the_rpc_is_reported_and_nothing_recorded(
    etcd: EtcdMember,
) -> None:
    keys = KeyLayout(random_key("maint-old").decode(), "/master")
    async with open_etcd(etcd.settings()) as store, serving(FailoverBase()) as endpoint:
        with SuperviseEndpoint(endpoint) as client, anyio.fail_after(20):
            with pytest.raises(ClientsFailed, match="too old for maintenance mode"):
                await switch_maintenance(
                    [client], store, keys, enabled=True, reason="r", by="b", call_timeout_s=5
                )
            assert await read_maintenance(store, keys) is None
