from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import anyio
import asyncpg
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from pgcm_common.pgbouncer import (
    PgBouncerAdmin,
    PgBouncerAuthError,
    PgBouncerSettings,
    PgBouncerUnreachable,
    admins_for,
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


async def _client_query(bouncer: PgBouncerServer, database: str) -> None:
    connection = await asyncpg.connect(bouncer.client_dsn(database), statement_cache_size=0)
    try:
        await connection.execute("SELECT 1")
    finally:
        connection.terminate()


@pytest.mark.parametrize(
    ("via", "user"),
    [("unix", "postgres"), ("tcp", "postgres"), ("tcp", SCRAM_ADMIN)],
    ids=["unix-trust", "tcp-md5", "tcp-scram"],
)
async def test_admin_console_answers_over_every_login_path(
    pgbouncer: PgBouncerServer, via: Literal["tcp", "unix"], user: str
) -> None:
    settings = pgbouncer.admin_settings(via=via, user=user)
    if via == "unix":
        # Trust over the unix socket: no password needed at all.
        settings = settings.model_copy(update={"password": None})
    admin = PgBouncerAdmin(settings)
    with anyio.fail_after(10):
        version = await admin.show_version()
        await admin.resume()
    assert version.text.startswith("PgBouncer 1.")


@pytest.mark.parametrize("user", ["postgres", SCRAM_ADMIN])
async def test_wrong_password_is_an_auth_error(pgbouncer: PgBouncerServer, user: str) -> None:
    settings = pgbouncer.admin_settings(user=user).model_copy(
        update={"password": SecretStr("wrong")}
    )
    admin = PgBouncerAdmin(settings)
    with anyio.fail_after(10):
        with pytest.raises(PgBouncerAuthError):
            await admin.show_databases()
        with pytest.raises(PgBouncerAuthError):
            await admin.resume()


async def test_missing_unix_socket_is_unreachable() -> None:
    with tempfile.TemporaryDirectory() as empty:
        admin = PgBouncerAdmin(PgBouncerSettings(host=empty, port=free_tcp_port()))
        with anyio.fail_after(10):
            with pytest.raises(PgBouncerUnreachable):
                await admin.resume()
            with pytest.raises(PgBouncerUnreachable):
                await admin.show_state()


async def test_abandoned_pause_logs_and_resumes(pgbouncer: PgBouncerServer) -> None:
    admin = PgBouncerAdmin(pgbouncer.admin_settings())
    holder = await asyncpg.connect(pgbouncer.client_dsn("app"), statement_cache_size=0)
    try:
        await holder.execute("BEGIN; SELECT 1")
        with capture_logs() as logs, pytest.raises(TimeoutError), anyio.fail_after(0.5):
            await admin.pause()
        with anyio.fail_after(5):
            await _client_query(pgbouncer, "app")
            state = await admin.show_state()
    finally:
        holder.terminate()
    events = [(entry["event"], entry.get("outcome"), entry.get("reason")) for entry in logs]
    assert ("clients.pgbouncer.pause", "abandoned", None) in events
    assert ("clients.pgbouncer.resume", "resumed", "pause_abandoned") in events
    assert "app" not in state.paused_databases


async def test_pause_and_resume_log_the_original_event_names(pgbouncer: PgBouncerServer) -> None:
    admin = PgBouncerAdmin(pgbouncer.admin_settings())
    with capture_logs() as logs, anyio.fail_after(10):
        await admin.pause()
        await admin.resume()
        await admin.reload()
    assert [entry["event"] for entry in logs] == [
        "clients.pgbouncer.pause",
        "clients.pgbouncer.resume",
        "pgbouncer.reload_configuration",
    ]
    assert all("password" not in str(entry) for entry in logs)


async def test_resume_is_sent_on_the_connection_the_pause_left_open(
    pgbouncer: PgBouncerServer,
) -> None:
    admin = PgBouncerAdmin(pgbouncer.admin_settings())
    with anyio.fail_after(10):
        before = await admin_clients(pgbouncer.admin_settings())
        await admin.pause()
        held = await admin_clients(pgbouncer.admin_settings())
        await admin.resume()
        await _client_query(pgbouncer, "app")
        after = await admin_clients(pgbouncer.admin_settings())
    assert (held, after) == (before + 1, before)


async def test_resume_after_a_pgbouncer_restart_logs_in_again(
    postgres_primary: PostgresServer, tmp_path: Path
) -> None:
    port = free_tcp_port()
    databases = {"app": backend_connstr(postgres_primary)}
    with start_pgbouncer(tmp_path / "first", databases=databases, port=port) as first:
        admin = PgBouncerAdmin(first.admin_settings())
        with anyio.fail_after(10):
            await admin.pause()
    with (
        start_pgbouncer(tmp_path / "second", databases=databases, port=port) as second,
        capture_logs() as logs,
        anyio.fail_after(10),
    ):
        await admin.resume()
        await _client_query(second, "app")
    assert [e["event"] for e in logs].count("clients.pgbouncer.resume.reconnect") == 1


async def test_reload_applies_a_rewritten_ini(
    pgbouncer: PgBouncerServer, postgres_primary: PostgresServer
) -> None:
    admin = PgBouncerAdmin(pgbouncer.admin_settings())
    original = pgbouncer.ini_path.read_text()
    extra = f"app2 = host=127.0.0.1 port={postgres_primary.port} dbname=postgres\n"
    try:
        await anyio.Path(pgbouncer.ini_path).write_text(
            original.replace("[databases]\n", "[databases]\n" + extra)
        )
        with anyio.fail_after(10):
            await admin.reload()
            rows = {row.name: row for row in await admin.show_databases()}
            await _client_query(pgbouncer, "app2")
        assert rows["app2"].port == postgres_primary.port
    finally:
        await anyio.Path(pgbouncer.ini_path).write_text(original)
        with anyio.fail_after(10):
            await admin.reload()


async def test_disabled_database_refuses_new_clients(pgbouncer: PgBouncerServer) -> None:
    admin = PgBouncerAdmin(pgbouncer.admin_settings())
    with anyio.fail_after(10):
        await admin.disable("app")
        try:
            with pytest.raises(asyncpg.PostgresError, match="disabled"):
                await _client_query(pgbouncer, "app")
        finally:
            await admin.enable("app")
        await _client_query(pgbouncer, "app")


async def test_several_endpoints_reach_the_same_bouncer(pgbouncer: PgBouncerServer) -> None:
    tcp = pgbouncer.admin_settings()
    settings = tcp.model_copy(update={"extra_endpoints": (pgbouncer.endpoint(via="unix"),)})
    admins = admins_for(settings)
    with anyio.fail_after(10):
        versions = {(await admin.show_version()).text for admin in admins}
    assert len(admins) == 2
    assert len(versions) == 1


def test_ini_and_log_paths_are_exposed(pgbouncer: PgBouncerServer) -> None:
    assert "[databases]" in pgbouncer.ini_path.read_text()
    assert Path(pgbouncer.log_path).exists()
