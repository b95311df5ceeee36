"""The NodeStatus PostgreSQL probe against a real primary and streaming standby."""

from __future__ import annotations

from datetime import timedelta

import anyio
import asyncpg
import pytest
from pydantic import SecretStr

from pgcm_supervise.status import AsyncpgPostgresProbe
from pgcm_testkit.eventually import eventually
from pgcm_testkit.postgres import PostgresPair

pytestmark = pytest.mark.integration


def probe_for(dsn: str) -> AsyncpgPostgresProbe:
    return AsyncpgPostgresProbe(SecretStr(dsn), timeout=timedelta(seconds=5))


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


async def test_unreachable_postgres_raises_os_error() -> None:
    probe = probe_for("postgresql://postgres@127.0.0.1:1/postgres")
    with anyio.fail_after(15), pytest.raises(OSError, match=r"Connect call failed|refused"):
        await probe.probe()
