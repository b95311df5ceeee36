"""A fleet of app hosts (``pgcm-lab fleet``): extra proxy + PgBouncer pairs in the app node.

Each pair must route its clients to the primary, follow a switchover like the lab's own
proxies, and leave nothing behind when stopped: no process, no acknowledgement in etcd.
The cluster is left healthy, with pgcm converged, for the tests after this file.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from pgcm_lab.fleet import Fleet, Member
from pgcm_lab.lab import Lab
from pgcm_lab.pgcm import wait_pgcm_ready
from pgcm_lab.testing import address, run_failover
from pgcm_lab.topology import APP_NODE

pytestmark = [
    pytest.mark.lab,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(300),
]

SIZE = 3


async def _through_pair(lab: Lab, member: Member) -> str:
    argv = ["psql", "-X", "-h", "127.0.0.1", "-p", str(member.port), "-U", "postgres", "-d",
            "postgres", "-qAt", "-c", "select inet_server_addr(), pg_is_in_recovery()"]  # fmt: skip
    return (await lab.exec(APP_NODE, argv)).stdout.strip()


async def test_fleet_pairs_follow_a_switchover_and_stop_without_leftovers(lab: Lab) -> None:
    fleet = Fleet(lab)
    primary = await lab.wait_healthy()
    try:
        with anyio.fail_after(180):
            await wait_pgcm_ready(lab, primary)
            await fleet.start(SIZE, address(lab, primary))
        pids = fleet.pids()
        assert sorted(pids) == ["app-1", "app-2", "app-3"]
        assert all(pid is not None for pair in pids.values() for pid in pair), pids
        memory = fleet.memory()
        assert len(memory) == 2 * SIZE
        assert all(0 < m.pss_kb <= m.rss_kb for m in memory.values()), memory
        assert await _through_pair(lab, Member(2)) == f"{address(lab, primary)}|f"

        names = [n.name for n in lab.topology.nodes]
        target = names[(names.index(primary) + 1) % len(names)]
        run = await run_failover(lab, "--yes", "--target", target)
        assert run.returncode == 0, run.logs[-3000:]
        acknowledged = run.data["proxies_acknowledged"]
        assert isinstance(acknowledged, list)
        assert {f"app-{i}" for i in range(1, SIZE + 1)} <= set(map(str, acknowledged))
        with anyio.fail_after(120):
            await fleet.wait_acked(address(lab, target))
            await wait_pgcm_ready(lab, target)
        assert await _through_pair(lab, Member(3)) == f"{address(lab, target)}|f"
    finally:
        stopped = await fleet.stop()
    assert stopped == 2 * SIZE
    assert fleet.members() == []
    assert not [pid for pair in pids.values() for pid in pair if pid is not None and _alive(pid)]
    acks = await fleet.acks()
    # A proxy's clean exit revokes its lease: no acknowledgement is left to expire.
    assert not [k for k in acks if k.startswith("app-")], json.dumps(acks)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
