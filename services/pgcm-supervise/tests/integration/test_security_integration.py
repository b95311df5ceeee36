from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
import structlog
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import StreamTerminatedError
from pydantic import SecretStr
from structlog.testing import capture_logs

from pgcm_common.pacemaker import StaticNodeAddresses
from pgcm_common.proto.failover import Empty, FailoverStub, HealthCheckResponseStatus
from pgcm_supervise.grpc_serve import GrpcServerOptions, serve_grpc
from pgcm_supervise.pacemaker_control import FakePacemakerControl
from pgcm_supervise.security import SecurityOptions
from pgcm_supervise.server import FailoverServer, SystemClock
from pgcm_testkit.fakes.pacemaker import FakeCrmMonReader, state_from_file
from pgcm_testkit.fakes.pgbouncer import FakePgBouncerAdmin

if TYPE_CHECKING:
    from conftest import Certs

pytestmark = pytest.mark.integration

FIXTURE = (
    Path(__file__).parents[4]
    / "libs/pgcm-common/tests/fixtures/pacemaker/01-healthy-n1-primary.xml"
)
# A rejected connection surfaces differently by TLS version and timing.
REJECTED = (ConnectionError, StreamTerminatedError, ssl.SSLError, OSError)


async def rejected(stub: FailoverStub) -> bool:
    # A client may also never get an answer (TLS 1.3 rejects a client certificate after
    # the client's side of the handshake is done), so the call is bounded. grpclib's
    # client cancels its own task on connection failures without ``uncancel()``, which
    # anyio would later misread: the call runs in a task of its own.
    outcome: list[bool] = []

    async def call() -> None:
        with anyio.move_on_after(2):
            try:
                await stub.health_check(Empty())
            except REJECTED:
                outcome.append(True)
                return
            outcome.append(False)
            return
        outcome.append(True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
    return outcome == [True]


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    if cert is not None and key is not None:
        context.load_cert_chain(cert, key)
    return context


@asynccontextmanager
async def serving(security: SecurityOptions) -> AsyncIterator[int]:
    api = FailoverServer(
        [FakePgBouncerAdmin()],
        FakeCrmMonReader(state_from_file(FIXTURE, resource_id="pgsqld")),
        FakePacemakerControl(),
        addresses=StaticNodeAddresses({"n2": "10.0.0.2"}),
        etcd_probe=anyio.lowlevel.checkpoint,
        clock=SystemClock(),
    )
    async with api, anyio.create_task_group() as tg:
        yield await tg.start(serve_grpc, [api], GrpcServerOptions(port=0, security=security))
        tg.cancel_scope.cancel()


@asynccontextmanager
async def stub_for(port: int, context: ssl.SSLContext | None = None) -> AsyncIterator[FailoverStub]:
    channel = Channel("127.0.0.1", port, ssl=context)
    try:
        yield FailoverStub(channel)
    finally:
        channel.close()


def tls(certs: Certs, *, mutual: bool = False) -> SecurityOptions:
    return SecurityOptions(
        tls_cert_file=certs.server_cert,
        tls_key_file=certs.server_key,
        tls_client_ca_file=certs.ca if mutual else None,
    )


async def test_tls_client_trusting_the_ca_connects(certs: Certs) -> None:
    with anyio.fail_after(10):
        async with serving(tls(certs)) as port, stub_for(port, client_context(certs.ca)) as stub:
            response = await stub.health_check(Empty())
    assert response.status is HealthCheckResponseStatus.HEALTHY


async def test_tls_server_rejects_a_plain_text_client(certs: Certs) -> None:
    with anyio.fail_after(10):
        async with serving(tls(certs)) as port, stub_for(port) as stub:
            assert await rejected(stub)


async def test_mtls_accepts_a_trusted_client_certificate_and_names_it(certs: Certs) -> None:
    context = client_context(certs.ca, certs.client_cert, certs.client_key)
    with (
        anyio.fail_after(10),
        capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs,
    ):
        async with serving(tls(certs, mutual=True)) as port, stub_for(port, context) as stub:
            await stub.resume(Empty())
    starts = [e for e in logs if e["event"] == "grpc.request.start"]
    assert [(e["method"], e["caller"]) for e in starts] == [("resume", "cert:failover-client")]
    assert starts[0]["trace"]


async def test_mtls_rejects_an_untrusted_client_certificate(certs: Certs) -> None:
    context = client_context(certs.ca, certs.rogue_cert, certs.rogue_key)
    with anyio.fail_after(10):
        async with serving(tls(certs, mutual=True)) as port, stub_for(port, context) as stub:
            assert await rejected(stub)


async def test_mtls_rejects_a_client_without_certificate(certs: Certs) -> None:
    with anyio.fail_after(10):
        async with (
            serving(tls(certs, mutual=True)) as port,
            stub_for(port, client_context(certs.ca)) as stub,
        ):
            assert await rejected(stub)


TOKENS = SecurityOptions(tokens={"failover": SecretStr("s3cret"), "ops": SecretStr("other")})


@pytest.mark.parametrize(
    "metadata", [{}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}]
)
async def test_token_missing_or_wrong_is_unauthenticated(metadata: dict[str, str]) -> None:
    with anyio.fail_after(10):
        async with serving(TOKENS) as port, stub_for(port) as stub:
            with pytest.raises(GRPCError) as caught:
                await stub.pause(Empty(), metadata=metadata)  # type: ignore[arg-type]
    assert caught.value.status is Status.UNAUTHENTICATED


async def test_right_token_is_accepted_and_names_the_caller() -> None:
    with (
        anyio.fail_after(10),
        capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs,
    ):
        async with serving(TOKENS) as port, stub_for(port) as stub:
            await stub.resume(Empty(), metadata={"authorization": "Bearer s3cret"})
    finishes = [e for e in logs if e["event"] == "grpc.request.finish"]
    assert [(e["caller"], e["status"]) for e in finishes] == [("token:failover", "OK")]


async def test_token_and_tls_together(certs: Certs) -> None:
    security = SecurityOptions(
        tls_cert_file=certs.server_cert, tls_key_file=certs.server_key, tokens=TOKENS.tokens
    )
    with anyio.fail_after(10):
        async with serving(security) as port, stub_for(port, client_context(certs.ca)) as stub:
            with pytest.raises(GRPCError) as caught:
                await stub.health_check(Empty())
            ok = await stub.health_check(Empty(), metadata={"authorization": "Bearer other"})
    assert caught.value.status is Status.UNAUTHENTICATED
    assert ok.status is HealthCheckResponseStatus.HEALTHY
