"""Credentials are checked on every rpc, and a trusted token never excuses a rogue certificate.

Complements test_security_integration.py (which covers the TLS handshake cases and a
missing or wrong token on ``pause``): here each rpc of the service, including the
mutating ``migrate``/``unmigrate``, is refused without credentials and with a wrong
token, and the refused token never appears in a log line.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final

import anyio
import pytest
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import StreamTerminatedError
from pydantic import SecretStr
from structlog.testing import capture_logs

from pgcm_common.pacemaker import StaticNodeAddresses
from pgcm_common.proto.failover import (
    Empty,
    FailoverStub,
    MaintenanceRequest,
    MigrateRequest,
    PauseRequest,
)
from pgcm_supervise.grpc_serve import GrpcServerOptions, serve_grpc
from pgcm_supervise.pacemaker_control import FakePacemakerControl
from pgcm_supervise.security import SecurityOptions
from pgcm_supervise.server import FailoverServer, SystemClock
from pgcm_testkit.fakes.pacemaker import FakeCrmMonReader, state_from_file
from pgcm_testkit.fakes.pgbouncer import FakePgBouncerAdmin

if TYPE_CHECKING:
    from conftest import Certs

pytestmark = pytest.mark.integration

FIXTURE: Final = (
    Path(__file__).parents[4]
    / "libs/pgcm-common/tests/fixtures/pacemaker/01-healthy-n1-primary.xml"
)
GOOD: Final = "good-token-0a1b"
WRONG: Final = "wrong-token-9z8y"
Call = Callable[[FailoverStub, dict[str, str]], Awaitable[object]]
CALLS: Final[dict[str, Call]] = {
    "health_check": lambda s, m: s.health_check(Empty(), metadata=m),
    "pause": lambda s, m: s.pause(PauseRequest(), metadata=m),
    "resume": lambda s, m: s.resume(Empty(), metadata=m),
    "migrate": lambda s, m: s.migrate(Empty(), metadata=m),
    "unmigrate": lambda s, m: s.unmigrate(Empty(), metadata=m),
    "migrate_to": lambda s, m: s.migrate_to(MigrateRequest(), metadata=m),
    "set_maintenance": lambda s, m: s.set_maintenance(MaintenanceRequest(), metadata=m),
}


@asynccontextmanager
async def serving(security: SecurityOptions) -> AsyncIterator[tuple[int, FakePgBouncerAdmin]]:
    bouncer = FakePgBouncerAdmin()
    api = FailoverServer(
        [bouncer],
        FakeCrmMonReader(state_from_file(FIXTURE, resource_id="pgsqld")),
        FakePacemakerControl(),
        addresses=StaticNodeAddresses({"n1": "10.0.0.1", "n2": "10.0.0.2", "n3": "10.0.0.3"}),
        etcd_probe=anyio.lowlevel.checkpoint,
        clock=SystemClock(),
    )
    async with api, anyio.create_task_group() as tg:
        port = await tg.start(serve_grpc, [api], GrpcServerOptions(port=0, security=security))
        yield port, bouncer
        tg.cancel_scope.cancel()


@pytest.mark.parametrize(
    "metadata", [{}, {"authorization": f"Bearer {WRONG}"}], ids=["none", "wrong"]
)
@pytest.mark.parametrize("rpc", sorted(CALLS))
async def test_every_rpc_refuses_missing_or_wrong_token_and_never_logs_it(
    rpc: str, metadata: dict[str, str]
) -> None:
    security = SecurityOptions(tokens={"ops": SecretStr(GOOD)})
    with anyio.fail_after(10), capture_logs() as logs:
        async with serving(security) as (port, bouncer):
            channel = Channel("127.0.0.1", port)
            try:
                with pytest.raises(GRPCError) as caught:
                    await CALLS[rpc](FailoverStub(channel), metadata)
            finally:
                channel.close()
    assert caught.value.status is Status.UNAUTHENTICATED
    assert not bouncer.paused
    assert WRONG not in repr(logs)
    assert GOOD not in repr(logs)


async def test_untrusted_client_certificate_is_refused_even_with_a_valid_token(
    certs: Certs,
) -> None:
    security = SecurityOptions(
        tls_cert_file=certs.server_cert,
        tls_key_file=certs.server_key,
        tls_client_ca_file=certs.ca,
        tokens={"ops": SecretStr(GOOD)},
    )
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.set_alpn_protocols(["h2"])
    context.load_cert_chain(certs.rogue_cert, certs.rogue_key)
    outcome: list[str] = []
    with anyio.fail_after(10):
        async with serving(security) as (port, bouncer):
            channel = Channel("127.0.0.1", port, ssl=context)

            async def call() -> None:
                # See test_security_integration.rejected: a TLS 1.3 rejection may
                # never answer, so the call is bounded and runs in its own task.
                with anyio.move_on_after(2):
                    try:
                        await FailoverStub(channel).pause(
                            PauseRequest(), metadata={"authorization": f"Bearer {GOOD}"}
                        )
                    except (ConnectionError, StreamTerminatedError, ssl.SSLError, OSError):
                        outcome.append("rejected")
                        return
                    except GRPCError as exc:
                        outcome.append(f"grpc:{exc.status.name}")
                        return
                    outcome.append("accepted")
                    return
                outcome.append("rejected")

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(call)
            finally:
                channel.close()
            assert not bouncer.paused
    assert outcome == ["rejected"]
