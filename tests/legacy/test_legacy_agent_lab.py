# ruff: noqa: ASYNC110  # polling other processes' state: there is no event to await
"""pgcm switches over a cluster run by the legacy ``ocf:heartbeat:pgsql`` agent, under load.

The clone is named ``msPostgresql`` (as the original pgsql-cluster-manager expects) and
pgcm-supervise reads it with ``resource_id = "pgsql"``. After the switchover the agent
keeps the old primary stopped until its ``PGSQL.lock`` is removed, as an operator does
(``Lab.readmit_legacy_standbys``); then the cluster is whole again.
"""

from __future__ import annotations

import anyio
import pytest

from pgcm_lab.lab import Lab
from pgcm_lab.load import LoadReport
from pgcm_lab.pgcm import wait_pgcm_ready
from pgcm_lab.testing import address, routed_host, run_failover
from pgcm_lab.topology import APP_NODE

pytestmark = [
    pytest.mark.lab,
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.timeout(300),
]


async def _app_clients(lab: Lab) -> int:
    argv = ["psql", "-X", "-h", "/run/pgbouncer", "-p", "6432", "-U", "postgres", "-d",
            "pgbouncer", "-qAt", "-c", "SHOW CLIENTS"]  # fmt: skip
    out = await lab.exec(APP_NODE, argv, user="postgres")
    return sum(1 for line in out.stdout.splitlines() if "pgbench" in line.split("|"))


async def test_pgcm_switches_the_legacy_agents_primary_with_no_failed_transaction(
    legacy_lab: Lab,
) -> None:
    lab = legacy_lab
    with anyio.fail_after(240):
        before = await lab.wait_healthy()
        sync = [name for name, (_, state) in (await lab.replication(before)).items()
                if state == "sync"]  # fmt: skip
        results: dict[str, object] = {}

        async def load() -> None:
            results["load"] = await lab.load(seconds=20, clients=4)

        async with anyio.create_task_group() as tg:
            tg.start_soon(load)
            while await _app_clients(lab) < 4:
                await anyio.sleep(0.1)
            run = await run_failover(lab, "--yes")
        assert run.returncode == 0, run.logs[-3000:]
        chosen = run.data["target"]
        assert isinstance(chosen, dict)
        target = str(chosen["node"])
        # The legacy agent may only promote its synchronous standby.
        assert [target] == sync
        assert await lab.primary() == target
        report = results["load"]
        assert isinstance(report, LoadReport)
        assert report.transactions > 0
        assert report.failed_transactions == 0, report.errors
        assert report.aborted_clients == 0, report.errors
        assert await routed_host(lab, APP_NODE) == address(lab, target)
        # The agent keeps the ex-primary stopped until PGSQL.lock goes; then it follows.
        assert await lab.readmit_legacy_standbys() == [before]
        assert await lab.wait_healthy() == target
        await wait_pgcm_ready(lab, target)
