"""RoutingConsole against a real PgBouncer: one kept connection, and a new one when it broke."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from pgcm_common.pgbouncer import (
    PgBouncerAuthError,
    PgBouncerSettings,
    PgBouncerUnreachable,
    RoutingConsole,
)
from pgcm_testkit.pgbouncer import (
    SCRAM_ADMIN,
    PgBouncerServer,
    admin_clients,
    backend_connstr,
    start_pgbouncer,
)
from pgcm_testkit.postgres import PostgresServer
from pgcm_testkit.process import free_tcp_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("user", ["postgres", SCRAM_ADMIN], ids=["md5", "scram"])
async def test_commands_share_one_connection_until_closed(
    pgbouncer: PgBouncerServer, user: str
) -> None:
    settings = pgbouncer.admin_settings(user=user)
    console = RoutingConsole(settings)
    before = await admin_clients(settings)
    with anyio.fail_after(10):
        for _ in range(3):
            await console.reload()
            rows = await console.show_databases()
        assert any(row.name == "app" for row in rows)
        assert await admin_clients(settings) == before + 1
        await console.aclose()
        assert await admin_clients(settings) == before


async def test_a_restarted_pgbouncer_is_reached_again_on_a_new_connection(
    postgres_primary: PostgresServer, tmp_path: Path
) -> None:
    port = free_tcp_port()
    databases = {"app": backend_connstr(postgres_primary)}
    with start_pgbouncer(tmp_path / "first", databases=databases, port=port) as first:
        console = RoutingConsole(first.admin_settings())
        with anyio.fail_after(10):
            await console.reload()
    with (
        start_pgbouncer(tmp_path / "second", databases=databases, port=port),
        capture_logs() as logs,
        anyio.fail_after(10),
    ):
        rows = await console.show_databases()
        await console.aclose()
    assert any(row.name == "app" for row in rows)
    assert [e["event"] for e in logs].count("pgbouncer.console.reconnect") == 1


async def test_nobody_listening_is_unreachable_and_a_wrong_password_an_auth_error(
    pgbouncer: PgBouncerServer,
) -> None:
    closed_port = pgbouncer.admin_settings().model_copy(update={"port": free_tcp_port()})
    wrong_password = pgbouncer.admin_settings().model_copy(update={"password": SecretStr("wrong")})
    with anyio.fail_after(10):
        with pytest.raises(PgBouncerUnreachable):
            await RoutingConsole(closed_port).reload()
        with pytest.raises(PgBouncerAuthError):
            await RoutingConsole(wrong_password).show_databases()


async def test_settings_are_read_and_set_and_pools_listed(pgbouncer: PgBouncerServer) -> None:
    console = RoutingConsole(pgbouncer.admin_settings())
    try:
        with anyio.fail_after(10):
            before = await console.show_setting("server_login_retry")
            await console.set_number("server_login_retry", "7")
            assert await console.show_setting("server_login_retry") == "7"
            await console.set_number("server_login_retry", before)
            assert await console.show_setting("server_login_retry") == before
            assert all(pool.cl_waiting >= 0 for pool in await console.show_pools())
    finally:
        await console.aclose()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("server_login_retry", "1; SHUTDOWN"),
        ("server_login_retry", "'1'"),
        ("server_login_retry", ""),
        ("server_login_retry", "-1"),
        ("server_login_retry = 1; SHUTDOWN; SET x", "1"),
        ("Server_Login_Retry", "1"),
    ],
)
async def test_set_refuses_anything_but_a_setting_name_and_a_plain_number(
    key: str, value: str
) -> None:
    # Refused before any connection: the settings point nowhere reachable.
    console = RoutingConsole(PgBouncerSettings(host="127.0.0.1", port=1))
    with pytest.raises(ValueError, match="not a"):
        await console.set_number(key, value)
    with pytest.raises(ValueError, match="not a PgBouncer setting name"):
        await console.show_setting("x; SHUTDOWN")
