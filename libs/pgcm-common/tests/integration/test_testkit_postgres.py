from __future__ import annotations

import anyio
import asyncpg
import pytest

from pgcm_testkit.eventually import eventually
from pgcm_testkit.postgres import PostgresPair, PostgresServer

pytestmark = pytest.mark.integration


async def _fetchval(server: PostgresServer, sql: str) -> object:
    connection = await asyncpg.connect(server.dsn)
    try:
        return await connection.fetchval(sql)
    finally:
        await connection.close()


async def test_each_server_reports_its_own_cluster_name(postgres_pair: PostgresPair) -> None:
    with anyio.fail_after(10):
        assert await _fetchval(postgres_pair.primary, "SHOW cluster_name") == "primary"
        assert await _fetchval(postgres_pair.standby, "SHOW cluster_name") == "standby"
        assert await _fetchval(postgres_pair.primary, "SELECT pg_is_in_recovery()") is False
        assert await _fetchval(postgres_pair.standby, "SELECT pg_is_in_recovery()") is True


async def test_standby_streams_from_primary(postgres_pair: PostgresPair) -> None:
    async def streaming() -> bool:
        state = await _fetchval(
            postgres_pair.primary,
            "SELECT state FROM pg_stat_replication WHERE application_name = 'standby'",
        )
        return state == "streaming"

    with anyio.fail_after(15):
        await eventually(streaming)


async def test_write_on_primary_appears_on_standby(postgres_pair: PostgresPair) -> None:
    with anyio.fail_after(15):
        connection = await asyncpg.connect(postgres_pair.primary.dsn)
        try:
            await connection.execute("CREATE TABLE IF NOT EXISTS testkit_marker (v int)")
            await connection.execute("INSERT INTO testkit_marker VALUES (42)")
        finally:
            await connection.close()

        async def replicated() -> bool:
            found = await _fetchval(
                postgres_pair.standby,
                "SELECT count(*) FROM pg_class WHERE relname = 'testkit_marker'",
            )
            return found == 1

        await eventually(replicated)
