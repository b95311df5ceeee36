from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import anyio
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.testing import ChannelFor

from pgcm_common.proto.failover import (
    Empty,
    FailoverBase,
    HealthCheckResponse,
    HealthCheckResponseStatus,
    MigrateRequest,
    MigrateResponse,
    PauseRequest,
    PauseResponse,
    ResumeResponse,
    UnmigrateResponse,
)
from pgcm_failover.client import SuperviseEndpoint, parse_endpoint, pause_request
from pgcm_failover.errors import (
    SuperviseRefused,
    SuperviseTooOld,
    SuperviseUnauthorized,
    SuperviseUnavailable,
)
from pgcm_failover.pipeline import Health, MigrationTarget
from pgcm_testkit.process import free_tcp_port


@dataclass
class Servicer(FailoverBase):
    fail_with: Status | None = None
    healthy: bool = True
    has_migrate_to: bool = True
    pauses: list[PauseRequest] = field(default_factory=list)
    migrate_targets: list[str | None] = field(default_factory=list)

    def _maybe_fail(self) -> None:
        if self.fail_with is not None:
            raise GRPCError(self.fail_with, "exceeded pause timeout")

    async def health_check(self, message: Empty) -> HealthCheckResponse:
        if self.healthy:
            return HealthCheckResponse(status=HealthCheckResponseStatus.HEALTHY)
        return HealthCheckResponse(
            status=HealthCheckResponseStatus.UNHEALTHY, reasons=["pgbouncer unreachable"]
        )

    async def pause(self, message: PauseRequest) -> PauseResponse:
        self.pauses.append(message)
        self._maybe_fail()
        return PauseResponse()

    async def resume(self, message: Empty) -> ResumeResponse:
        self._maybe_fail()
        return ResumeResponse()

    async def migrate(self, message: Empty) -> MigrateResponse:
        self.migrate_targets.append(None)
        self._maybe_fail()
        return MigrateResponse(migrating_to="n2", address="10.0.0.12")

    async def migrate_to(self, message: MigrateRequest) -> MigrateResponse:
        if not self.has_migrate_to:
            raise GRPCError(Status.UNIMPLEMENTED, "Method not found")
        self.migrate_targets.append(message.target)
        self._maybe_fail()
        return MigrateResponse(migrating_to=message.target, address="10.0.0.13")

    async def unmigrate(self, message: Empty) -> UnmigrateResponse:
        self._maybe_fail()
        return UnmigrateResponse()


@pytest.fixture
async def servicer() -> Servicer:
    return Servicer()


@pytest.fixture
async def endpoint(servicer: Servicer) -> AsyncIterator[SuperviseEndpoint]:
    async with ChannelFor([servicer]) as channel:
        yield SuperviseEndpoint("pg1:8080", channel=channel, token="s3cret")  # noqa: S106 - a test token


def test_pause_request_carries_whole_seconds_rounded_up_and_milliseconds() -> None:
    request = pause_request(
        pause_timeout=timedelta(milliseconds=1500), expiry=timedelta(seconds=25)
    )
    assert (request.timeout, request.expiry) == (2, 25)
    assert (request.timeout_ms, request.expiry_ms) == (1500, 25000)
    tiny = pause_request(pause_timeout=timedelta(milliseconds=1), expiry=timedelta(0))
    assert (tiny.timeout, tiny.timeout_ms, tiny.expiry, tiny.expiry_ms) == (1, 1, 1, 1)


def test_endpoints_parse_host_port_and_bracketed_ipv6() -> None:
    assert parse_endpoint("pg1:8080") == ("pg1", 8080)
    assert parse_endpoint("[::1]:50051") == ("::1", 50051)
    for bad in ("pg1", ":80", "pg1:http", "pg1:70000"):
        with pytest.raises(ValueError, match="endpoint"):
            parse_endpoint(bad)


async def test_health_check_returns_the_servers_reasons(
    servicer: Servicer, endpoint: SuperviseEndpoint
) -> None:
    with anyio.fail_after(5):
        assert await endpoint.health_check() == Health(healthy=True)
        servicer.healthy = False
        assert await endpoint.health_check() == Health(
            healthy=False, reasons=("pgbouncer unreachable",)
        )


async def test_pause_sends_both_precisions(servicer: Servicer, endpoint: SuperviseEndpoint) -> None:
    with anyio.fail_after(5):
        await endpoint.pause(pause_timeout=timedelta(milliseconds=250), expiry=timedelta(seconds=3))
    assert [(p.timeout, p.timeout_ms, p.expiry, p.expiry_ms) for p in servicer.pauses] == [
        (1, 250, 3, 3000)
    ]


async def test_migrate_without_target_uses_the_original_rpc(
    servicer: Servicer, endpoint: SuperviseEndpoint
) -> None:
    with anyio.fail_after(5):
        assert await endpoint.migrate(None) == MigrationTarget("n2", "10.0.0.12")
        assert await endpoint.migrate("n3") == MigrationTarget("n3", "10.0.0.13")
    assert servicer.migrate_targets == [None, "n3"]


async def test_named_target_on_an_old_server_says_it_is_too_old(
    servicer: Servicer, endpoint: SuperviseEndpoint
) -> None:
    servicer.has_migrate_to = False
    with anyio.fail_after(5), pytest.raises(SuperviseTooOld, match="too old for --target"):
        await endpoint.migrate("n3")


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (Status.UNAVAILABLE, SuperviseUnavailable),
        (Status.UNAUTHENTICATED, SuperviseUnauthorized),
        (Status.PERMISSION_DENIED, SuperviseUnauthorized),
        (Status.FAILED_PRECONDITION, SuperviseRefused),
        (Status.INTERNAL, SuperviseRefused),
        (Status.DEADLINE_EXCEEDED, TimeoutError),
    ],
)
async def test_statuses_map_back_to_domain_errors(
    servicer: Servicer, endpoint: SuperviseEndpoint, status: Status, error: type[Exception]
) -> None:
    servicer.fail_with = status
    with anyio.fail_after(5), pytest.raises(error, match="exceeded pause timeout") as caught:
        await endpoint.pause(pause_timeout=timedelta(seconds=1), expiry=timedelta(seconds=2))
    assert "pg1:8080" in str(caught.value)


async def test_unreachable_endpoint_is_unavailable() -> None:
    with (
        SuperviseEndpoint(f"127.0.0.1:{free_tcp_port()}") as endpoint,
        anyio.fail_after(5),
        pytest.raises(SuperviseUnavailable, match="resume on"),
    ):
        await endpoint.resume()
