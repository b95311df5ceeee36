"""The NodeStatus PostgreSQL probe against a real primary and streaming standby."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import anyio
import asyncpg
import pytest
from pydantic import SecretStr

from pgcm_common.postgres import PostgresAuthError, PostgresUnreachable
from pgcm_supervise.status import LocalPostgresProbe
from pgcm_testkit.eventually import eventually
from pgcm_testkit.postgres import PostgresPair, PostgresServer

pytestmark = pytest.mark.integration


def probe_for(dsn: str) -> LocalPostgresProbe:
    return LocalPostgresProbe(SecretStr(dsn), timeout=timedelta(seconds=5))


async def test_primary_reports_its_streaming_standby_and_an_open_transaction(
    postgres_pair: PostgresPair,
) -> None:
    probe = probe_for(postgres_pair.primary.dsn)

    async def standby_streams() -> bool:
        status = await probe.probe()
        # replay_lsn stays NULL until the standby's first status report.
        return any(
            peer.state == "streaming" and peer.lag_bytes is not None for peer in status.replication
        )

    with anyio.fail_after(30):
        await eventually(standby_streams)
    connection = await asyncpg.connect(postgres_pair.primary.dsn)
    try:
        async with connection.transaction():
            await connection.execute("SELECT txid_current()")

            async def old_transaction_seen() -> bool:
                age = (await probe.probe()).oldest_transaction_age_s
                return age is not None and age > 0

            with anyio.fail_after(10):
                await eventually(old_transaction_seen)
    finally:
        with anyio.move_on_after(5, shield=True):
            await connection.close()
    status = await probe.probe()
    assert not status.in_recovery
    [peer] = [p for p in status.replication if p.state == "streaming"]
    assert peer.application_name == "standby"
    assert peer.lag_bytes is None or peer.lag_bytes >= 0
    assert peer.lag_s is None or peer.lag_s >= 0
    assert peer.sync_state in {"async", "sync", "potential", "quorum"}
    assert status.timeline is not None
    assert status.timeline >= 1


async def test_standby_reports_recovery_and_no_replication_rows(
    postgres_pair: PostgresPair,
) -> None:
    with anyio.fail_after(15):
        status = await probe_for(postgres_pair.standby.dsn).probe()
    assert status.in_recovery
    assert status.replication == ()

    async def standby_timeline_known() -> bool:
        return (await probe_for(postgres_pair.standby.dsn).probe()).timeline is not None

    with anyio.fail_after(30):
        await eventually(standby_timeline_known)
    primary = await probe_for(postgres_pair.primary.dsn).probe()
    standby = await probe_for(postgres_pair.standby.dsn).probe()
    assert standby.timeline == primary.timeline


async def test_unreachable_postgres_raises_unreachable() -> None:
    probe = probe_for("postgresql://postgres@127.0.0.1:1/postgres")
    with anyio.fail_after(15), pytest.raises(PostgresUnreachable, match=r"127.0.0.1:1"):
        await probe.probe()


SCRAM_ROLE = "pgcm_probe_scram"
SCRAM_PASSWORD = "probe-secret"  # noqa: S105 - a throw-away test credential


async def _scram_role(server: PostgresServer) -> None:
    """Create a plain role that must log in over TCP with SCRAM-SHA-256."""
    hba = server.data_dir / "pg_hba.conf"
    line = f"host all {SCRAM_ROLE} 127.0.0.1/32 scram-sha-256\n"
    text = hba.read_text()
    if line not in text:
        hba.write_text(line + text)  # first match wins: before the trust lines
    connection = await asyncpg.connect(server.dsn)
    try:
        await connection.execute("SET password_encryption = 'scram-sha-256'")
        exists = await connection.fetchval(
            "SELECT count(*) FROM pg_roles WHERE rolname = $1", SCRAM_ROLE
        )
        if not exists:
            await connection.execute(f"CREATE ROLE {SCRAM_ROLE} LOGIN")
        await connection.execute(f"ALTER ROLE {SCRAM_ROLE} PASSWORD '{SCRAM_PASSWORD}'")
        await connection.execute("SELECT pg_reload_conf()")
    finally:
        await connection.close()


async def test_scram_login_with_the_password_in_the_dsn_or_a_password_file(
    postgres_pair: PostgresPair, tmp_path: Path
) -> None:
    primary = postgres_pair.primary
    await _scram_role(primary)
    where = f"host=127.0.0.1 port={primary.port} user={SCRAM_ROLE} dbname=postgres"
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{primary.port}:postgres:{SCRAM_ROLE}:{SCRAM_PASSWORD}\n")
    passfile.chmod(0o600)

    async def logged_in() -> bool:
        try:
            await probe_for(f"{where} password={SCRAM_PASSWORD}").probe()
        except PostgresAuthError:
            return False  # the reloaded pg_hba.conf is not in force yet
        return True

    with anyio.fail_after(30):
        await eventually(logged_in)
    for dsn in (
        f"postgresql://{SCRAM_ROLE}:{SCRAM_PASSWORD}@127.0.0.1:{primary.port}/postgres",
        f"{where} passfile={passfile}",
    ):
        with anyio.fail_after(15):
            status = await probe_for(dsn).probe()
        assert not status.in_recovery
    with anyio.fail_after(15), pytest.raises(PostgresAuthError, match="password authentication"):
        await probe_for(f"{where} password=wrong").probe()
    with anyio.fail_after(15), pytest.raises(PostgresAuthError, match="none is set"):
        await probe_for(where).probe()


async def test_unix_socket_directory_from_the_dsn(postgres_pair: PostgresPair) -> None:
    primary = postgres_pair.primary
    dsn = f"postgresql:///postgres?host={primary.socket_dir}&port={primary.port}&user=postgres"
    with anyio.fail_after(15):
        status = await probe_for(dsn).probe()
    assert not status.in_recovery
    assert status.timeline is not None
