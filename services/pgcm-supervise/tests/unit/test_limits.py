"""Bounds on requests: sizes, shapes and echoed values (``limits.py`` and the server)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.testing import ChannelFor
from structlog.testing import capture_logs

from pgcm_common.pacemaker import StaticNodeAddresses
from pgcm_common.proto.failover import (
    Empty,
    FailoverStub,
    MigrateRequest,
    PauseRequest,
)
from pgcm_supervise.errors import InvalidRequest, UnknownMigrationTarget
from pgcm_supervise.limits import (
    MAX_NODE_NAME_BYTES,
    MAX_REQUEST_BYTES,
    MAX_STATUS_MESSAGE_CHARS,
    BoundedCodec,
    check_request,
)
from pgcm_supervise.pacemaker_control import FakePacemakerControl
from pgcm_supervise.server import FailoverServer, FailoverServerOptions, SystemClock, grpc_error
from pgcm_testkit.fakes.pacemaker import FakeCrmMonReader, state_from_file
from pgcm_testkit.fakes.pgbouncer import FakePgBouncerAdmin

FIXTURE = (
    Path(__file__).parents[4]
    / "libs/pgcm-common/tests/fixtures/pacemaker/01-healthy-n1-primary.xml"
)
HUGE = "n" * 1_000_000


def server(bouncer: FakePgBouncerAdmin, control: FakePacemakerControl) -> FailoverServer:
    return FailoverServer(
        [bouncer],
        FakeCrmMonReader(state_from_file(FIXTURE, resource_id="pgsqld")),
        control,
        addresses=StaticNodeAddresses({"n1": "10.0.0.1", "n2": "10.0.0.2", "n3": "10.0.0.3"}),
        etcd_probe=anyio.lowlevel.checkpoint,
        clock=SystemClock(),
        options=FailoverServerOptions(max_pause_expiry=timedelta(seconds=60)),
    )


async def call_status(call: object) -> GRPCError:
    with pytest.raises(GRPCError) as caught, anyio.fail_after(10):
        await call  # type: ignore[misc]
    return caught.value


@pytest.mark.parametrize(
    "target",
    [
        HUGE,
        "n" * (MAX_NODE_NAME_BYTES + 1),
        "\u00e9" * (MAX_NODE_NAME_BYTES // 2 + 1),  # short in characters, long in bytes
        "n2\n",
        "n2\x00",
        "\x1b[31mn2",
    ],
    ids=["1MB", "256-bytes", "256-utf8-bytes", "newline", "nul", "escape"],
)
async def test_migrate_to_refuses_a_target_no_node_can_have_quoting_nothing(target: str) -> None:
    bouncer, control = FakePgBouncerAdmin(), FakePacemakerControl()
    api = server(bouncer, control)
    with capture_logs() as logs:
        async with api, ChannelFor([api]) as channel:
            error = await call_status(FailoverStub(channel).migrate_to(MigrateRequest(target)))
    assert error.status is Status.INVALID_ARGUMENT
    assert error.message is not None
    assert error.message.startswith("invalid target:")
    assert target not in error.message
    assert "nnnnnnnn" not in repr(logs)
    assert control.calls == []


async def test_migrate_to_a_longest_possible_unknown_name_quotes_a_short_prefix() -> None:
    bouncer, control = FakePgBouncerAdmin(), FakePacemakerControl()
    api = server(bouncer, control)
    name = "x" * MAX_NODE_NAME_BYTES
    with capture_logs() as logs:
        async with api, ChannelFor([api]) as channel:
            error = await call_status(FailoverStub(channel).migrate_to(MigrateRequest(name)))
    assert error.status is Status.INVALID_ARGUMENT
    assert error.message is not None
    assert name not in error.message
    assert "(255 chars)" in error.message
    assert name not in repr(logs)


@pytest.mark.parametrize(
    "request_",
    [
        PauseRequest(timeout=5, expiry=61),
        PauseRequest(timeout=5, expiry=2**31 - 1),
        PauseRequest(timeout_ms=1000, expiry_ms=60_001),
        PauseRequest(timeout=61, expiry=30),
    ],
    ids=["expiry", "expiry-2094", "expiry-ms", "timeout"],
)
async def test_pause_above_the_ceiling_is_invalid_and_pauses_nothing(
    request_: PauseRequest,
) -> None:
    bouncer, control = FakePgBouncerAdmin(), FakePacemakerControl()
    api = server(bouncer, control)
    async with api, ChannelFor([api]) as channel:
        error = await call_status(FailoverStub(channel).pause(request_))
    assert error.status is Status.INVALID_ARGUMENT
    assert "max_pause_expiry" in (error.message or "")
    assert not bouncer.paused


async def test_pause_at_the_ceiling_is_accepted() -> None:
    bouncer, control = FakePgBouncerAdmin(), FakePacemakerControl()
    api = server(bouncer, control)
    async with api, ChannelFor([api]) as channel:
        with anyio.fail_after(10):
            response = await FailoverStub(channel).pause(PauseRequest(timeout=5, expiry=60))
            await FailoverStub(channel).resume(Empty())
    assert response.expires_at is not None
    assert response.created_at is not None
    assert response.expires_at - response.created_at == timedelta(seconds=60)


def test_grpc_error_clips_any_long_message() -> None:
    error = grpc_error(UnknownMigrationTarget("n9", tuple(f"node{i}" for i in range(10_000))))
    assert error.status is Status.INVALID_ARGUMENT
    assert len(error.message or "") == MAX_STATUS_MESSAGE_CHARS


def test_unknown_target_message_shows_an_escaped_prefix() -> None:
    assert str(UnknownMigrationTarget("a\nb" + "c" * 100, ("n1",))) == (
        f"node 'a\\nb{'c' * 29}'... (103 chars) is not in the cluster (known: n1)"
    )


@pytest.mark.parametrize(
    "message",
    [Empty(), PauseRequest(timeout=5, expiry=25), MigrateRequest("n2"), MigrateRequest()],
)
def test_valid_requests_pass(message: Empty | PauseRequest | MigrateRequest) -> None:
    check_request(message)
    codec = BoundedCodec()
    assert codec.decode(codec.encode(message, type(message)), type(message)) == message


def test_a_field_decoded_with_another_wire_type_is_invalid() -> None:
    # Field 1 of PauseRequest sent length-delimited decodes into a list of ints.
    wrong = PauseRequest.FromString(b"\x0a\x03abc")
    with pytest.raises(InvalidRequest, match="timeout: has the wrong type"):
        check_request(wrong)
    with pytest.raises(GRPCError) as caught:
        BoundedCodec().decode(b"\x0a\x03abc", PauseRequest)
    assert caught.value.status is Status.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\x0a\x02\xff\xfe", MigrateRequest),  # target not UTF-8
        (b"\x0d\x01\x02\x03\x04", PauseRequest),  # fixed32 for an int32 field
    ],
    ids=["binary-target", "fixed32"],
)
def test_undecodable_requests_are_invalid_argument(
    data: bytes, kind: type[MigrateRequest | PauseRequest]
) -> None:
    with pytest.raises(GRPCError) as caught:
        BoundedCodec().decode(data, kind)
    assert caught.value.status is Status.INVALID_ARGUMENT
    assert caught.value.message == "request message does not decode"


def test_an_oversized_request_is_resource_exhausted_before_decoding() -> None:
    data = bytes(MigrateRequest("n" * MAX_REQUEST_BYTES))
    with pytest.raises(GRPCError) as caught:
        BoundedCodec().decode(data, MigrateRequest)
    assert caught.value.status is Status.RESOURCE_EXHAUSTED
    assert "nnnn" not in (caught.value.message or "")
