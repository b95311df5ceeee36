from __future__ import annotations

from datetime import UTC, datetime

import anyio
from grpclib.testing import ChannelFor

from pgcm_common.proto.failover import (
    Empty,
    FailoverBase,
    FailoverStub,
    HealthCheckResponse,
    HealthCheckResponseStatus,
    MigrateResponse,
    PauseRequest,
    PauseResponse,
)

WHEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


class _Server(FailoverBase):
    async def health_check(self, message: Empty) -> HealthCheckResponse:
        return HealthCheckResponse(status=HealthCheckResponseStatus.HEALTHY)

    async def pause(self, message: PauseRequest) -> PauseResponse:
        return PauseResponse(created_at=WHEN, expires_at=WHEN.replace(second=9 + message.expiry))


def test_server_base_registers_the_original_snake_case_paths() -> None:
    assert sorted(_Server().__mapping__()) == [
        "/failover.Failover/health_check",
        "/failover.Failover/migrate",
        "/failover.Failover/migrate_to",  # pgcm extension (a new rpc, ADR 0004)
        "/failover.Failover/pause",
        "/failover.Failover/resume",
        "/failover.Failover/set_maintenance",  # pgcm extension (a new rpc, ADR 0004)
        "/failover.Failover/unmigrate",
    ]


def test_pause_request_uses_the_original_field_numbers() -> None:
    # field 1 varint 5, field 2 varint 10
    assert bytes(PauseRequest(timeout=5, expiry=10)) == bytes([0x08, 0x05, 0x10, 0x0A])
    assert PauseRequest.parse(bytes([0x10, 0x0A, 0x08, 0x05])) == PauseRequest(timeout=5, expiry=10)


def test_health_check_status_enum_values_match_the_proto() -> None:
    assert [s.value for s in HealthCheckResponseStatus] == [0, 1, 2]
    assert bytes(HealthCheckResponse(status=HealthCheckResponseStatus.UNHEALTHY)) == b"\x08\x02"


def test_migrate_response_field_numbers_and_timestamp_round_trip() -> None:
    msg = MigrateResponse(migrating_to="n2", address="10.0.0.2", created_at=WHEN)
    data = bytes(msg)
    assert data.startswith(b"\x0a\x02n2\x12\x0810.0.0.2\x1a")  # fields 1, 2, then 3
    assert MigrateResponse.parse(data) == msg


async def test_stub_and_server_talk_over_grpclib() -> None:
    async with ChannelFor([_Server()]) as channel:
        stub = FailoverStub(channel)
        with anyio.fail_after(5):
            health = await stub.health_check()
            paused = await stub.pause(PauseRequest(timeout=1, expiry=20))
    assert health.status is HealthCheckResponseStatus.HEALTHY
    assert paused.expires_at == WHEN.replace(second=29)
