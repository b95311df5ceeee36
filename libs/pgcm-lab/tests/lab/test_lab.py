# ruff: noqa: ASYNC110  # polling the cluster's state: there is no event to await
"""The lab, for real: roles, switchover, node crash, partition, rejoin, tear-down.

The tests share one lab and run in file order: each leaves the cluster healthy (or
restores it) for the next; tear-down comes last.
"""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest

from pgcm_lab.lab import BRIDGE_NS, Lab, Progress, lab_leftovers, node_pids, postmaster_pids
from pgcm_lab.probe import NO_ANSWER
from pgcm_lab.topology import APP_NODE, CLONE, PG_BINDIR, PGDATA

pytestmark = pytest.mark.lab


async def _roles(lab: Lab) -> dict[str, str]:
    status = await lab.status()
    nodes = status["nodes"]
    assert isinstance(nodes, list)
    return {n["name"]: n["role"] for n in nodes if "role" in n}


async def _timeline(lab: Lab, node: str) -> int:
    # Read on the host: the node may be powered off (fenced).
    data = str(lab.host_path(node, PGDATA))
    out = await lab.run(["runuser", "-u", "postgres", "--", f"{PG_BINDIR}/pg_controldata", data])
    match = re.search(r"Latest checkpoint's TimeLineID:\s+(\d+)", out.stdout)
    assert match, out.stdout
    return int(match.group(1))


async def test_lab_comes_up_with_one_primary_one_sync_one_potential(lab: Lab) -> None:
    with anyio.fail_after(30):
        assert await lab.wait_healthy() == "n1"
        roles = await _roles(lab)
    assert sorted(roles.values()) == ["potential", "primary", "sync"]
    status = await lab.status()
    nodes = status["nodes"]
    assert isinstance(nodes, list)
    assert all(n["pgbouncer"] for n in nodes)
    assert all(n["etcd"] for n in nodes if n["name"] != "app")


async def test_load_through_the_app_pgbouncer_commits_transactions(lab: Lab) -> None:
    with anyio.fail_after(60):
        report = await lab.load(seconds=2, clients=2)
    assert report.transactions > 0
    assert report.clean, report.errors
    assert report.latency_max_ms is not None


async def test_switchover_moves_the_primary_and_both_standbys_follow(lab: Lab) -> None:
    with anyio.fail_after(90):
        before = await _roles(lab)
        target = next(n for n, r in before.items() if r == "sync")
        result = await lab.switchover(target)
        roles = await _roles(lab)
    assert result.source == "n1"
    assert roles[target] == "primary"
    assert sorted(r for n, r in roles.items() if n != target) == ["potential", "sync"]
    rows = await lab.psql(
        target, "select count(*) from pg_stat_replication where state='streaming'"
    )
    assert rows == "2"


async def test_killing_the_primarys_node_promotes_another_node(lab: Lab) -> None:
    with anyio.fail_after(30):
        old = await lab.wait_healthy()
    survivors = [n.name for n in lab.topology.others(old)]
    await lab.kill_node(old)
    with anyio.fail_after(60):
        while (new := (await lab.view(survivors[0])).primary) in {None, old}:
            await anyio.sleep(0.2)
        while await lab.psql(new, "select pg_is_in_recovery()", check=False) != "f":
            await anyio.sleep(0.2)
    assert new in survivors
    with anyio.fail_after(110):
        await lab.rejoin(old)
        assert await lab.wait_healthy() == new


async def test_partitioned_primary_loses_quorum_the_majority_promotes_and_it_rejoins(
    lab: Lab,
) -> None:
    with anyio.fail_after(30):
        old = await lab.wait_healthy()
    majority = [n.name for n in lab.topology.others(old)]
    await lab.partition(old)
    with anyio.fail_after(90):
        # The majority cannot tell a cut-off node from a dead one: it fences it (the
        # fence helper powers it off) before it promotes a standby.
        while lab.init_pid(old) is not None:
            await anyio.sleep(0.2)
        # Re-read the promoted node each time: the first node Pacemaker tries to promote
        # is not necessarily the one that ends up accepting writes.
        while True:
            new = (await lab.view(majority[0])).primary
            if new in majority and (
                await lab.psql(new, "select pg_is_in_recovery()", check=False) == "f"
            ):
                break
            await anyio.sleep(0.2)
    assert new in majority
    # The ex-primary was powered off on its old timeline: it diverged from the new one.
    walfile = await lab.psql(new, "select pg_walfile_name(pg_current_wal_lsn())")
    assert await _timeline(lab, old) < int(walfile[:8], 16)
    with anyio.fail_after(110):
        method = await lab.rejoin(old)
        assert await lab.wait_healthy() == new
    assert method in {"pg_rewind", "pg_basebackup"}
    repl = await lab.replication(new)
    assert repl[old][0] == "streaming"


@pytest.mark.timeout(300)
async def test_rejoin_stops_a_postmaster_pacemaker_lost_track_of(lab: Lab) -> None:
    """The fault seen in CI: a postmaster runs but its postmaster.pid is gone.

    PAF's stop then fails ("PID file does not exist"), and rebuilding the data directory
    under that postmaster wrecks the node. rejoin must find it in the node's process
    list and shut it down (SIGINT: PostgreSQL logs a fast shutdown) before it rewinds.
    """
    with anyio.fail_after(30):
        primary = await lab.wait_healthy()
    node = next(n.name for n in lab.topology.others(primary))
    pidfile = lab.host_path(node, f"{PGDATA}/postmaster.pid")
    ban = ["crm_resource", "--resource", CLONE, "--ban", "--node", node, "--lifetime", "PT10M"]
    await lab.exec(primary, ban)
    with anyio.fail_after(60):
        while node in (await lab.view(primary)).unpromoted or pidfile.exists():
            await anyio.sleep(0.2)
    # Start it behind Pacemaker's back, then take its pidfile away. The postmaster
    # notices only at its next once-a-minute check: rejoin must act before that.
    lab.host_path(node, f"{PGDATA}/standby.signal").touch()
    # -l: the postmaster must not inherit our pipes (exec would wait for it to exit).
    start = [f"{PG_BINDIR}/pg_ctl", "-D", PGDATA, "-l", "/var/log/postgresql/stray.log", "-w",
             "start"]  # fmt: skip
    with anyio.fail_after(30):
        await lab.exec(node, start, user="postgres")
    stray = int(pidfile.read_text().split()[0])
    pidfile.unlink()
    assert postmaster_pids(
        (await lab.exec(node, ["ps", "-e", "-o", "pid=,ppid=,comm="])).stdout
    ) == [stray]
    with anyio.fail_after(110):
        await lab.rejoin(node)
        assert await lab.wait_healthy() == primary
    log = (lab.node_dir(node) / "var-log-postgresql" / "postgresql.log").read_text()
    # PAF's stop fails; with fencing on, Pacemaker may power the node off first (the
    # postmaster dies with it), or rejoin shuts the postmaster down (a fast shutdown).
    fenced = f"off {node} done" in (lab.state_dir / "fence" / "fenced.log").read_text()
    assert fenced or f"[{stray}] LOG:  received fast shutdown request" in log
    assert f"[{stray}] LOG:  performing immediate shutdown" not in log
    assert (await lab.replication(primary))[node][0] == "streaming"


async def test_status_reports_a_frozen_pgbouncer_as_no_answer_instead_of_hanging(
    lab: Lab,
) -> None:
    """A SIGSTOPped PgBouncer accepts connections and never answers: status must not wait."""
    pidfile = lab.host_path(APP_NODE, "/run/pgbouncer/pgbouncer.pid")
    pid = pidfile.read_text().split()[0]  # a PID of the node's own PID namespace
    await lab.exec(APP_NODE, ["kill", "-STOP", pid])
    try:
        with anyio.fail_after(30):
            status = await lab.status()
    finally:
        await lab.exec(APP_NODE, ["kill", "-CONT", pid])
    nodes = status["nodes"]
    assert isinstance(nodes, list)
    app = next(n for n in nodes if n["name"] == APP_NODE)
    assert app["pgbouncer"] == NO_ANSWER
    assert status["no_answer"] == [f"pgbouncer on {APP_NODE}"]
    assert status["primary"] is not None


async def test_fencing_is_on_with_fence_pgcmlab_registered_like_any_agent(lab: Lab) -> None:
    with anyio.fail_after(60):
        primary = await lab.wait_healthy()
        options = await lab.exec(primary, ["crm_attribute", "--type", "crm_config", "--name",
                                           "stonith-enabled", "--query", "--quiet"])  # fmt: skip
        metadata = await lab.exec(primary, ["stonith_admin", "--metadata", "--agent",
                                            "fence_pgcmlab"])  # fmt: skip
        registered = await lab.exec(primary, ["stonith_admin", "--list-registered"])
        targets = await lab.exec(primary, ["stonith_admin", "--list", "n1"])
    assert options.stdout.strip() == "true"
    assert '<resource-agent name="fence_pgcmlab"' in metadata.stdout
    assert "fence-lab" in registered.stdout
    assert "fence-lab" in targets.stdout


async def test_down_leaves_nothing_behind(lab: Lab) -> None:
    pids = node_pids(lab)
    assert pids
    helper = int((lab.state_dir / "pids" / "fenced.helper").read_text())
    pids.append(helper)
    with anyio.fail_after(10):
        seconds = await lab.down()
    assert seconds < 10
    assert lab_leftovers(lab, pids) == []
    assert not lab.state_dir.exists()


async def test_down_removes_a_half_built_lab(lab: Lab) -> None:
    half = Lab(lab.state_dir, progress=Progress(None))
    await anyio.to_thread.run_sync(half._prepare_dirs)
    await half._net_up()
    await half._start_init("n1")
    pids = node_pids(half)
    assert pids
    await half.down()
    assert lab_leftovers(half, pids) == []
    assert not any(
        BRIDGE_NS in line for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )
