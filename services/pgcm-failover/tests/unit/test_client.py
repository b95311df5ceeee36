from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from grpclib.const import Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream
from grpclib.testing import ChannelFor
from structlog.testing import capture_logs

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


@dataclass
class DeadlineRecorder(Servicer):
    """Records the gRPC deadline each health_check arrived with (grpclib's raw stream)."""

    deadlines: list[float | None] = field(default_factory=list)

    def __mapping__(self) -> dict[str, Handler]:
        mapping = super().__mapping__()
        path = "/failover.Failover/health_check"
        mapping[path] = mapping[path]._replace(func=self._raw_health_check)
        return mapping

    async def _raw_health_check(self, stream: Stream[Empty, HealthCheckResponse]) -> None:
        await stream.recv_message()
        deadline = stream.deadline
        self.deadlines.append(None if deadline is None else deadline.time_remaining())
        await stream.send_message(HealthCheckResponse(status=HealthCheckResponseStatus.HEALTHY))


async def test_the_callers_deadline_travels_as_the_grpc_timeout() -> None:
    recorder = DeadlineRecorder()
    async with ChannelFor([recorder]) as channel:
        endpoint = SuperviseEndpoint("pg1:8080", channel=channel)
        with anyio.fail_after(2):
            await endpoint.health_check()
        await endpoint.health_check()  # no enclosing deadline: none sent
    first, second = recorder.deadlines
    assert first is not None
    assert 0 < first <= 2
    assert second is None


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


@asynccontextmanager
async def tcp_server(
    handler: Callable[[anyio.abc.SocketStream], Awaitable[None]],
) -> AsyncIterator[int]:
    """Serve ``handler`` on a loopback port until exit; yield the port."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        yield listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio, not Django
        tg.cancel_scope.cancel()


async def hang_up(stream: anyio.abc.SocketStream) -> None:
    await stream.aclose()


async def never_answer(stream: anyio.abc.SocketStream) -> None:
    async with stream:
        await anyio.sleep_forever()


async def test_connection_closed_by_server_is_unavailable_and_leaves_caller_cancellable() -> None:
    async with tcp_server(hang_up) as port:
        with SuperviseEndpoint(f"127.0.0.1:{port}") as endpoint:
            with anyio.fail_after(5), pytest.raises(SuperviseUnavailable, match="health_check on"):
                await endpoint.health_check()
            # grpclib cancels the task awaiting a failed call; that stray request must
            # not stay on ours, or this scope would re-raise its own cancellation.
            with anyio.CancelScope() as scope:
                scope.cancel()
                await anyio.sleep(5)
            assert scope.cancelled_caught


async def test_a_stray_cancellation_of_the_call_is_unavailable() -> None:
    async def cancelled_by_the_library() -> None:
        current = asyncio.current_task()
        assert current is not None
        current.cancel()  # what grpclib.utils.Wrapper does when the connection fails
        await anyio.sleep(5)

    with SuperviseEndpoint("127.0.0.1:1") as endpoint, anyio.fail_after(5):
        with pytest.raises(SuperviseUnavailable, match="cancelled by grpclib"):
            await endpoint._call("resume", cancelled_by_the_library)
        await anyio.lowlevel.checkpoint()  # raises if the stray cancel reached our task


async def test_cancelling_the_caller_still_cancels_a_call_in_flight() -> None:
    async with tcp_server(never_answer) as port:
        with SuperviseEndpoint(f"127.0.0.1:{port}") as endpoint, anyio.fail_after(5):
            with anyio.move_on_after(0.2) as scope:
                await endpoint.resume()
            assert scope.cancelled_caught


TEST_TOKEN = "t0ken"  # noqa: S105 - a throw-away test token


async def test_a_token_without_tls_is_warned_about_once_per_endpoint() -> None:
    with capture_logs() as logs:
        SuperviseEndpoint("127.0.0.1:8080", token=TEST_TOKEN).close()
        SuperviseEndpoint("127.0.0.1:8081").close()
    warnings = [e for e in logs if e["event"] == "supervise.token.cleartext"]
    assert [(e["log_level"], e["endpoint"]) for e in warnings] == [("warning", "127.0.0.1:8080")]
    assert "without TLS" in warnings[0]["msg"]
    assert TEST_TOKEN not in repr(logs)


async def test_a_token_with_tls_is_not_warned_about() -> None:
    context = ssl.create_default_context()
    with capture_logs() as logs:
        SuperviseEndpoint("127.0.0.1:8080", ssl_context=context, token=TEST_TOKEN).close()
    assert [e for e in logs if e["event"] == "supervise.token.cleartext"] == []
