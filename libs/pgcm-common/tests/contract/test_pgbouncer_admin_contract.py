"""One suite, two adapters: the fake PgBouncer admin console and a real PgBouncer 1.18."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import anyio
import asyncpg
import pytest

from pgcm_common.pgbouncer import (
    PgBouncerAdmin,
    PgBouncerAdminProtocol,
    PgBouncerCommandRefused,
    PgBouncerSettings,
    PgBouncerUnreachable,
)
from pgcm_testkit.eventually import eventually
from pgcm_testkit.fakes.pgbouncer import FakePgBouncerAdmin, fake_database
from pgcm_testkit.pgbouncer import PgBouncerServer
from pgcm_testkit.postgres import PostgresServer
from pgcm_testkit.process import free_tcp_port

# A query through a paused PgBouncer waits; this long is "it did not get through".
BLOCKED_PROBE_S = 0.5


@dataclass(frozen=True, slots=True)
class Harness:
    admin: PgBouncerAdminProtocol
    unreachable: PgBouncerAdminProtocol
    database: str
    backend_host: str
    backend_port: int
    hold_transaction: Callable[[], AbstractAsyncContextManager[None]]
    clients_can_query: Callable[[], Awaitable[bool]]


def _fake_harness() -> Harness:
    fake = FakePgBouncerAdmin([fake_database("app", "10.0.0.5", 5433)])

    async def clients_can_query() -> bool:
        return not fake.paused

    return Harness(
        admin=fake,
        unreachable=FakePgBouncerAdmin(reachable=False),
        database="app",
        backend_host="10.0.0.5",
        backend_port=5433,
        hold_transaction=fake.hold_transaction,
        clients_can_query=clients_can_query,
    )


def _real_harness(bouncer: PgBouncerServer, primary: PostgresServer) -> Harness:
    dsn = bouncer.client_dsn("app")

    @asynccontextmanager
    async def hold_transaction() -> AsyncIterator[None]:
        # statement_cache_size=0: prepared statements do not survive transaction pooling.
        connection = await asyncpg.connect(dsn, statement_cache_size=0)
        try:
            await connection.execute("BEGIN; SELECT 1")
            yield
        finally:
            connection.terminate()

    async def clients_can_query() -> bool:
        with anyio.move_on_after(BLOCKED_PROBE_S):
            connection = await asyncpg.connect(dsn, statement_cache_size=0)
            try:
                await connection.execute("SELECT 1")
            finally:
                connection.terminate()
            return True
        return False

    dead = PgBouncerSettings(host="127.0.0.1", port=free_tcp_port(), user="postgres")
    return Harness(
        admin=PgBouncerAdmin(bouncer.admin_settings()),
        unreachable=PgBouncerAdmin(dead),
        database="app",
        backend_host=primary.host,
        backend_port=primary.port,
        hold_transaction=hold_transaction,
        clients_can_query=clients_can_query,
    )


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.integration)])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "fake":
        yield _fake_harness()
        return
    bouncer: PgBouncerServer = request.getfixturevalue("pgbouncer")
    primary: PostgresServer = request.getfixturevalue("postgres_primary")
    real = _real_harness(bouncer, primary)
    yield real
    # A failed test must not leave the session's PgBouncer paused for the next one.
    with anyio.fail_after(5):
        await real.admin.resume()


def test_fake_satisfies_the_protocol() -> None:
    admin: PgBouncerAdminProtocol = FakePgBouncerAdmin()
    assert admin.endpoint.port == 6432


async def test_pause_blocks_clients_until_resume(harness: Harness) -> None:
    with anyio.fail_after(10):
        await harness.admin.pause()
        assert not await harness.clients_can_query()
        await harness.admin.resume()
        await eventually(harness.clients_can_query)


async def test_pause_and_resume_are_idempotent(harness: Harness) -> None:
    with anyio.fail_after(10):
        await harness.admin.pause()
        await harness.admin.pause()
        await harness.admin.resume()
        await harness.admin.resume()
        assert await harness.clients_can_query()


async def test_pause_cut_short_by_deadline_leaves_pgbouncer_resumed(harness: Harness) -> None:
    with anyio.fail_after(15):
        async with harness.hold_transaction():
            with pytest.raises(TimeoutError), anyio.fail_after(0.5):
                await harness.admin.pause()
            # Still inside the open transaction: other clients get through again.
            assert await harness.clients_can_query()
            state = await harness.admin.show_state()
            assert state.paused is not True
        await harness.admin.pause()
        await harness.admin.resume()


async def test_show_databases_reports_the_routed_backend(harness: Harness) -> None:
    with anyio.fail_after(5):
        rows = {row.name: row for row in await harness.admin.show_databases()}
    row = rows[harness.database]
    assert (row.host, row.port) == (harness.backend_host, harness.backend_port)
    assert not row.paused
    assert not row.disabled


async def test_disable_and_enable_are_idempotent_and_visible(harness: Harness) -> None:
    with anyio.fail_after(10):
        await harness.admin.disable(harness.database)
        await harness.admin.disable(harness.database)
        state = await harness.admin.show_state()
        assert harness.database in state.disabled_databases
        await harness.admin.enable(harness.database)
        await harness.admin.enable(harness.database)
        state = await harness.admin.show_state()
        assert harness.database not in state.disabled_databases


async def test_disable_of_unknown_database_is_refused(harness: Harness) -> None:
    with anyio.fail_after(5), pytest.raises(PgBouncerCommandRefused, match="no such database"):
        await harness.admin.disable("no_such_db")


async def test_reload_succeeds(harness: Harness) -> None:
    with anyio.fail_after(5):
        await harness.admin.reload()
        assert await harness.clients_can_query()


async def test_show_version_and_pools(harness: Harness) -> None:
    with anyio.fail_after(5):
        version = await harness.admin.show_version()
        pools = await harness.admin.show_pools()
    assert (version.major, version.minor) >= (1, 18)
    assert harness.database in {pool.database for pool in pools}


async def test_unreachable_console_raises_unreachable(harness: Harness) -> None:
    with anyio.fail_after(10):
        with pytest.raises(PgBouncerUnreachable):
            await harness.unreachable.pause()
        with pytest.raises(PgBouncerUnreachable):
            await harness.unreachable.show_databases()
