# ruff: noqa: ASYNC110  # polling other processes' state: there is no event to await
"""Fault injection in the 3-node lab with pgcm: nothing paused, converged, nothing lost.

One lab (with pgcm) serves every test; each leaves the cluster healthy for the next,
the node crashes come last. Each test runs an insert load generator through the app
node's PgBouncer (increasing ids; it prints every id whose commit it saw succeed), does
its damage, then asserts: every PgBouncer answers a query, one primary with etcd and
every proxy agreeing on it, and every acknowledged id is in the table on the primary.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Final, final

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.text import TextReceiveStream

from pgcm_lab.chain import failover_marks
from pgcm_lab.clientrun import check_commits, reconnecting_clients
from pgcm_lab.clients import ClientsLog
from pgcm_lab.lab import Lab
from pgcm_lab.pgcm import (
    MASTER_KEY,
    NAMESPACE,
    etcd_get,
    etcd_get_prefix,
    failover_argv,
    venv_script,
    wait_pgcm_ready,
)
from pgcm_lab.testing import (
    address,
    bouncer_answers,
    routed_host,
    run_failover,
    service_events,
)
from pgcm_lab.topology import APP_NODE, CLONE, PGDATA

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

TABLE: Final = "pgcm_faults"
SWITCHOVERS: Final = 20
HEALTHY_WITHIN_S: Final = 180
_HOLD_GRACE_S: Final = 0.5
# A survivor PAF refused to promote (another standby had more WAL) can reach
# migration-threshold and stay stopped: clean it up after this long, as an operator would.
_CLEAN_UP_AFTER_S: Final = 45.0
_BROKEN_BY: Final = pytest.StashKey[str]()

# The load generator: one connection through a PgBouncer, one autocommit INSERT at a
# time with increasing ids (simple query protocol: no prepared statements, which
# transaction pooling would break). "ok N" once the commit returned, "err N ..." when
# it failed (then it reconnects). SIGTERM stops it after the statement in flight.
_LOADGEN = """
import asyncio, signal, sys
import asyncpg

async def main(host, table):
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    n, conn = 0, None
    print("ready", flush=True)
    while not stop.is_set():
        n += 1
        try:
            if conn is None:
                conn = await asyncpg.connect(host=host, port=6432, user="postgres",
                    database="postgres", statement_cache_size=0, timeout=5)
            await asyncio.wait_for(conn.execute(f"insert into {table} (id) values ({n})"), 60)
            print(f"ok {n}", flush=True)
        except Exception as exc:
            print(f"err {n} {type(exc).__name__}: {str(exc)[:200]!r}", flush=True)
            if conn is not None:
                conn.terminate()
            conn = None
            await asyncio.sleep(0.1)
    if conn is not None:
        await conn.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


# --------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
async def lab_is_whole(lab: Lab, request: pytest.FixtureRequest) -> None:
    """Start each case on a healthy lab; once one could not, fail the rest at once.

    Without it a case that wrecked the lab made every later one wait out its 900 s
    timeout (a CI run took 37 minutes so). A Postgres node that an earlier failed case
    left powered off or cut off rejoins first (a failure stays that case's, not every later
    one's). The first case that finds the lab still unhealthy after HEALTHY_WITHIN_S
    fails and names itself; the ones after it fail without waiting.
    """
    stash = request.session.stash
    if _BROKEN_BY in stash:
        pytest.fail(f"not run: the lab was not healthy before {stash[_BROKEN_BY]}")
    try:
        with anyio.fail_after(HEALTHY_WITHIN_S * 2):
            for node in lab.topology.nodes:
                if lab.init_pid(node.name) is None or await lab.partitioned(node.name):
                    await lab.rejoin(node.name)
        with anyio.fail_after(HEALTHY_WITHIN_S):
            await lab.wait_healthy(clean_up_after=_CLEAN_UP_AFTER_S)
    except TimeoutError:
        stash[_BROKEN_BY] = request.node.name
        _, why = await lab.health()
        pytest.fail(
            f"the lab did not become healthy within {HEALTHY_WITHIN_S} s ({why}); crm_mon:\n"
            f"{await lab.crm_mon_text()}"
        )


@final
@dataclass(slots=True)
class LoadSeen:
    """What the load generator's client saw: acknowledged ids and errors."""

    acked: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)


@asynccontextmanager
async def insert_load(lab: Lab) -> AsyncIterator[LoadSeen]:
    """Run the load generator in the app node until the block ends; yield what it saw."""
    with anyio.fail_after(HEALTHY_WITHIN_S):
        primary = await lab.wait_healthy()
    await lab.psql(primary, f"create table if not exists {TABLE} (id bigint, at timestamptz "
                            "default now())")  # fmt: skip
    await lab.psql(primary, f"truncate {TABLE}")
    pid = lab.init_pid(APP_NODE)
    python = str(Path(venv_script("pgcm-failover")).parent / "python")
    argv = ["nsenter", "-t", str(pid), "-n", "--", python, "-c", _LOADGEN,
            address(lab, APP_NODE), TABLE]  # fmt: skip
    seen = LoadSeen()
    process = await anyio.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    async with process, anyio.create_task_group() as tg:
        ready = anyio.Event()

        async def read() -> None:
            assert process.stdout is not None
            buffered = ""
            async for chunk in TextReceiveStream(process.stdout):
                buffered += chunk
                *lines, buffered = buffered.split("\n")
                for line in lines:
                    kind, _, rest = line.partition(" ")
                    if kind == "ok":
                        seen.acked.add(int(rest))
                    elif kind == "ready":
                        ready.set()
                    else:
                        seen.errors.append(line)

        tg.start_soon(read)
        with anyio.fail_after(30):
            await ready.wait()
            while len(seen.acked) < 10:  # the load is flowing
                await anyio.sleep(0.1)
        try:
            yield seen
        finally:
            process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(70, shield=True):
                await process.wait()
            if process.returncode is None:
                process.kill()
                with anyio.move_on_after(5, shield=True):
                    await process.wait()


async def assert_converged(lab: Lab, seen: LoadSeen) -> str:
    """Assert nothing is paused, everything names one primary, no ack was lost."""
    with anyio.fail_after(90):
        primary = await lab.wait_healthy()
        await wait_pgcm_ready(lab, primary)
        want = address(lab, primary)
        for name in lab.running_nodes():
            while await routed_host(lab, name) != want:
                await anyio.sleep(0.1)
            assert await bouncer_answers(lab, name, seconds=10), f"{name}'s PgBouncer is paused"
        assert await etcd_get(lab, f"{NAMESPACE}{MASTER_KEY}") == want
        rows = await lab.psql(primary, f"select id from {TABLE}")  # noqa: S608  # constant name
    stored = {int(line) for line in rows.split()}
    lost = seen.acked - stored
    assert not lost, f"{len(lost)} acknowledged commits lost: {sorted(lost)[:20]}"
    assert seen.acked, "the load generator never committed"
    return primary


def _pid_ns(pid: int) -> str | None:
    try:
        return str(Path(f"/proc/{pid}/ns/pid").readlink())
    except OSError:
        return None


def node_process(lab: Lab, node: str, script: str) -> int | None:
    """The host PID of the process of node ``node`` whose program is ``script``.

    Only processes in that node's PID namespace count, and the restart wrapper (``sh``)
    is skipped: the PID returned is the daemon itself.
    """
    init = lab.init_pid(node)
    assert init is not None
    namespace = _pid_ns(init)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or _pid_ns(int(entry.name)) != namespace:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"python") and len(argv) > 1 and argv[1].endswith(script.encode()):
            return int(entry.name)
        if argv[0].endswith(script.encode()):
            return int(entry.name)
    return None


async def failover_with_fault(
    lab: Lab, after_phase: str, fault: Callable[[Process], Awaitable[None]], *args: str
) -> tuple[int, str]:
    """Run pgcm-failover; once ``after_phase`` is done, do ``fault`` while it goes on.

    ``fault`` gets the pgcm-failover process (to kill the operator's CLI itself). The
    log is drained all along (a full pipe would stall the switchover). Returns the exit
    code and the log. The caller bounds the time.
    """
    argv = failover_argv(lab, [*args, "--yes", "--json"])
    process = await anyio.open_process(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    logs: list[str] = []
    async with process, anyio.create_task_group() as tg:
        reached = anyio.Event()

        async def read() -> None:
            assert process.stderr is not None
            lines = BufferedByteReceiveStream(process.stderr)
            while True:
                try:
                    line = await lines.receive_until(b"\n", 1 << 20)
                except (anyio.EndOfStream, anyio.IncompleteRead):
                    return
                logs.append(line.decode(errors="replace"))
                event = json.loads(line) if line.startswith(b"{") else {}
                if (
                    event.get("event") == "failover.phase.done"
                    and event.get("phase") == after_phase
                ):
                    reached.set()

        tg.start_soon(read)
        await reached.wait()
        await fault(process)
        returncode = await process.wait()
    return returncode, "\n".join(logs)


async def wait_nothing_paused(lab: Lab) -> None:
    """Wait (caller bounds it) until a query passes through every running PgBouncer."""
    for name in lab.running_nodes():
        while not await bouncer_answers(lab, name, seconds=2):
            await anyio.sleep(0.2)


async def clean_up_after_a_failed_switchover(lab: Lab) -> None:
    """Wait (caller bounds it) until pgcm-failover cleanup succeeds.

    It refuses while the killed switchover's lock lease is alive; then it removes the
    move constraint and any pause left behind.
    """
    while (await run_failover(lab, "cleanup")).returncode != 0:
        await anyio.sleep(0.5)


# --------------------------------------------------------------------------- tests
async def test_back_to_back_switchovers_under_insert_load_have_no_errors_and_lose_nothing(
    lab: Lab,
) -> None:
    held: list[float] = []
    async with insert_load(lab) as seen:
        for _ in range(SWITCHOVERS):
            with anyio.fail_after(120):
                current = await lab.wait_healthy()
                await wait_pgcm_ready(lab, current)
                run = await run_failover(lab, "--yes")
            assert run.returncode == 0, run.logs[-3000:]
            held.append(float(str(run.data["paused_seconds"])))
    print(f"\n[faults] {SWITCHOVERS} switchovers, paused s: {held}, acked {len(seen.acked)}")  # noqa: T201
    assert seen.errors == []
    await assert_converged(lab, seen)


async def killed_mid_pause(lab: Lab, fault: Callable[[str, Process], Awaitable[None]]) -> LoadSeen:
    """Under load, run a switchover and do ``fault(primary, failover)`` once it paused.

    The switchover may fail or succeed: what matters is what is left. Waits until every
    PgBouncer answers and cleanup succeeded, asserts convergence; returns what the load
    generator saw.
    """
    async with insert_load(lab) as seen:
        with anyio.fail_after(120):
            primary = await lab.wait_healthy()
            await wait_pgcm_ready(lab, primary)
            await failover_with_fault(lab, "pause", partial(fault, primary), "--pause-expiry", "8s")
            await wait_nothing_paused(lab)
            await clean_up_after_a_failed_switchover(lab)
    await assert_converged(lab, seen)
    return seen


async def test_supervise_killed_while_pgbouncer_is_paused_does_not_leave_it_paused(
    lab: Lab,
) -> None:
    async def kill_supervise(primary: str, _failover: Process) -> None:
        victim = node_process(lab, primary, "pgcm-supervise")
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        # The restart wrapper starts supervise again.
        while node_process(lab, primary, "pgcm-supervise") in {None, victim}:
            await anyio.sleep(0.1)

    await killed_mid_pause(lab, kill_supervise)


async def test_pgbouncer_restarted_under_the_proxy_routes_to_the_primary_again(
    lab: Lab,
) -> None:
    async with insert_load(lab) as seen:
        with anyio.fail_after(120):
            primary = await lab.wait_healthy()
            await wait_pgcm_ready(lab, primary)
            node = next(n.name for n in lab.topology.others(primary))
            victim = node_process(lab, node, "pgbouncer")
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            while node_process(lab, node, "pgbouncer") is not None:
                await anyio.sleep(0.1)
            await lab.spawn(node, ["pgbouncer", "/etc/pgbouncer/pgbouncer.ini"],
                            "pgbouncer.out", user="postgres")  # fmt: skip
            while not await bouncer_answers(lab, node, seconds=2):
                await anyio.sleep(0.2)
            # And a switchover afterwards reaches the restarted PgBouncer too.
            run = await run_failover(lab, "--yes")
            assert run.returncode == 0, run.logs[-3000:]
    assert seen.errors == []
    await assert_converged(lab, seen)


async def test_operator_killed_while_pgbouncers_are_paused_leaves_nothing_paused(
    lab: Lab,
) -> None:
    async def kill_operator(_primary: str, failover: Process) -> None:
        failover.kill()  # SIGKILL: no undo runs; only the pause expiry and lease

    seen = await killed_mid_pause(lab, kill_operator)
    # The clients were held until the expiry, never refused.
    assert seen.errors == []


async def test_switchover_succeeds_while_an_etcd_member_restarts(lab: Lab) -> None:
    async with insert_load(lab) as seen:
        with anyio.fail_after(150):
            primary = await lab.wait_healthy()
            await wait_pgcm_ready(lab, primary)

            async def restart_first_etcd_member(_failover: Process) -> None:
                # n1's member is the first endpoint of every pgcm config.
                victim = node_process(lab, "n1", "etcd")
                assert victim is not None
                os.kill(victim, signal.SIGTERM)
                while node_process(lab, "n1", "etcd") is not None:
                    await anyio.sleep(0.05)
                await lab.start_etcd("n1")

            returncode, logs = await failover_with_fault(lab, "pause", restart_first_etcd_member)
            assert returncode == 0, logs[-3000:]
            await lab.wait_etcd_healthy()
    assert seen.errors == []
    await assert_converged(lab, seen)


async def test_switchover_succeeds_with_one_etcd_member_stopped(lab: Lab) -> None:
    async with insert_load(lab) as seen:
        with anyio.fail_after(150):
            primary = await lab.wait_healthy()
            await wait_pgcm_ready(lab, primary)
            # Stop n1's etcd, the first endpoint of every pgcm config: the clients must
            # move on to the other two members.
            victim = node_process(lab, "n1", "etcd")
            assert victim is not None
            os.kill(victim, signal.SIGSTOP)
            try:
                run = await run_failover(lab, "--yes")
            finally:
                os.kill(victim, signal.SIGCONT)
            assert run.returncode == 0, run.logs[-3000:]
    assert seen.errors == []
    await assert_converged(lab, seen)


async def stop_etcd_member(lab: Lab, node: str) -> None:
    """Stop ``node``'s etcd member (SIGTERM to its PID) and wait until it is gone."""
    victim = node_process(lab, node, "etcd")
    assert victim is not None, f"{node} runs no etcd member"
    os.kill(victim, signal.SIGTERM)
    while node_process(lab, node, "etcd") is not None:
        await anyio.sleep(0.05)


async def test_etcd_without_quorum_keeps_clients_working_and_refuses_a_switchover(
    lab: Lab,
) -> None:
    """Two of the three etcd members stopped: etcd has no quorum and answers nothing.

    PgBouncer keeps routing to the primary it has, so the clients see no error, and
    pgcm-failover refuses a switchover it could not coordinate: exit 1, nothing paused,
    no move constraint, the primary unchanged. Once the members are back, supervise
    publishes and every proxy acknowledges again.
    """
    async with insert_load(lab) as seen:
        with anyio.fail_after(150):
            primary = await lab.wait_healthy()
            await wait_pgcm_ready(lab, primary)
            stopped: list[str] = []
            try:
                for node in lab.topology.others(primary):
                    await stop_etcd_member(lab, node.name)
                    stopped.append(node.name)
                acked = len(seen.acked)
                run = await run_failover(lab, "--yes")
                assert run.returncode == 1, run.logs[-3000:]
                # Refused at the health check: nothing was locked, paused or moved.
                assert run.data.get("outcome") == "rolled_back", (run.data, run.logs[-3000:])
                phases = run.data["phases"]
                assert isinstance(phases, list)
                assert [phase.get("name") for phase in phases] == ["health_check"]
                assert "etcd" in str(run.data["error"])
                while len(seen.acked) < acked + 20:  # still committing, etcd or not
                    await anyio.sleep(0.1)
            finally:
                with anyio.CancelScope(shield=True):
                    for name in stopped:
                        await lab.start_etcd(name)
            await lab.wait_etcd_healthy()
            assert (await lab.view(primary)).primary == primary
    print(f"\n[faults] etcd without quorum: exit {run.returncode}, {run.data.get('error')}")  # noqa: T201
    assert seen.errors == []
    assert await assert_converged(lab, seen) == primary


async def test_partitioned_primary_is_replaced_and_rejoins_after_the_heal(lab: Lab) -> None:
    async with insert_load(lab) as seen:
        with anyio.fail_after(240):
            primary = await lab.wait_healthy()
            await wait_pgcm_ready(lab, primary)
            survivor = next(n.name for n in lab.topology.others(primary))
            await lab.partition(primary)
            try:
                # The majority side promotes a standby; the cut-off node loses quorum.
                while (new := (await lab.view(survivor)).primary) in {None, primary}:
                    await anyio.sleep(0.2)
                await wait_pgcm_ready(lab, str(new), unreachable={primary})
                acked = len(seen.acked)
                while len(seen.acked) < acked + 10:  # clients commit on the new primary
                    await anyio.sleep(0.1)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await lab.heal(primary)  # leave the lab whole for the next test
                raise
            # rejoin bans the ex-primary, heals the link, pg_rewinds it and clears the
            # ban: it comes back as a standby under the load.
            await lab.rejoin(primary)
    print(f"\n[faults] partition: {len(seen.errors)} client errors, new primary {new}")  # noqa: T201
    assert await assert_converged(lab, seen) == new


_PAF_ABORT: Final = "is the best candidate to promote, aborting current promotion"


def _lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


async def received_lsn(lab: Lab, standby: str) -> int:
    """How far ``standby`` has received WAL (what PAF compares before a promotion)."""
    return _lsn(await lab.psql(standby, "select pg_last_wal_receive_lsn()"))


@asynccontextmanager
async def replication_refused(lab: Lab, primary: str, standby: str) -> AsyncIterator[None]:
    """Make ``standby`` stop receiving WAL from ``primary`` (the lab's PostgreSQL only).

    The primary's pg_hba.conf rejects the standby's replication connections and its
    walsender is ended, so the standby's WAL stops where it is. Undone on exit while the
    primary still runs; a killed primary is rebuilt by ``Lab.rejoin``, which copies the
    new primary's pg_hba.conf.
    """
    hba = lab.host_path(primary, await lab.psql(primary, "show hba_file"))
    original = hba.read_text(encoding="utf-8")
    refuse = f"host replication all {address(lab, standby)}/32 reject\n"
    hba.write_text(refuse + original, encoding="utf-8")
    try:
        await lab.psql(primary, "select pg_reload_conf()")
        end_walsender = (
            "select pg_terminate_backend(pid) from pg_stat_replication "  # noqa: S608  # a lab node name
            f"where application_name = '{standby}'"
        )
        await lab.psql(primary, end_walsender)
        yield
    finally:
        if lab.init_pid(primary) is not None:
            with anyio.CancelScope(shield=True):
                hba.write_text(original, encoding="utf-8")
                await lab.psql(primary, "select pg_reload_conf()", check=False)


def paf_abort_lines(lab: Lab, node: str) -> int:
    """How often ``node``'s Pacemaker log mentions a promotion PAF aborted, so far."""
    log = lab.host_path(node, "/var/log/pacemaker/pacemaker.log")
    return log.read_text(encoding="utf-8", errors="replace").count(_PAF_ABORT)


async def recover_from_crash(lab: Lab, seen: LoadSeen, crashed: str) -> str:
    """After ``crashed``'s node died, wait until the cluster and the clients recover.

    Waits for the primary Pacemaker settles on with the survivors (the first node seen
    promoted is not necessarily the one that stays), for pgcm to publish it and every
    proxy to acknowledge it, and for the clients to commit through the app PgBouncer
    again; then ``crashed`` rejoins as a standby under the load. Returns the new primary.
    """
    survivors = [n.name for n in lab.topology.others(crashed)]
    new = await lab.wait_healthy(expect=survivors, clean_up_after=_CLEAN_UP_AFTER_S)
    await wait_pgcm_ready(lab, new)
    acked = len(seen.acked)
    while len(seen.acked) < acked + 10:
        await anyio.sleep(0.1)
    await lab.rejoin(crashed)
    return new


async def test_crash_with_the_other_standby_ahead_promotes_it_and_pgcm_follows(lab: Lab) -> None:
    """The standby with the most WAL becomes primary, and pgcm publishes only that one.

    The sync standby (the highest promotion score) stops receiving WAL, the other
    standby becomes sync and gets ahead, then the primary's node dies. Pacemaker first
    picks the higher-scored lagging standby, and PAF fails that promotion on purpose in
    favour of the one with more WAL (unless PAF's monitor re-scored them first, then
    Pacemaker picks it at once). Meanwhile crm_mon shows the failed instance as
    "Promoted": pgcm must not publish it, and must follow the final primary.
    """
    async with insert_load(lab) as seen:
        with anyio.fail_after(240):
            primary = await lab.wait_healthy()
            await wait_pgcm_ready(lab, primary)
            view = await lab.view(primary)
            survivors = [n.name for n in lab.topology.others(primary)]
            lagging = max(survivors, key=lambda n: view.scores.get(n, 0))
            ahead = next(n for n in survivors if n != lagging)
            abort_lines = paf_abort_lines(lab, lagging)
            async with replication_refused(lab, primary, lagging):
                while await received_lsn(lab, ahead) <= await received_lsn(lab, lagging):
                    await anyio.sleep(0.05)
                await lab.kill_node(primary)
            new = await recover_from_crash(lab, seen, primary)
    how = "after PAF aborted" if paf_abort_lines(lab, lagging) > abort_lines else "without"
    print(  # noqa: T201
        f"\n[faults] crash with {ahead} ahead of {lagging}: new primary {new} {how} a "
        f"promotion of {lagging}; {len(seen.errors)} client errors"
    )
    assert new == ahead
    assert await assert_converged(lab, seen) == new


async def test_primary_node_crash_promotes_a_standby_and_the_old_primary_rejoins(
    lab: Lab,
) -> None:
    async with insert_load(lab) as seen:
        with anyio.fail_after(240):
            primary = await lab.wait_healthy()
            await wait_pgcm_ready(lab, primary)
            await lab.kill_node(primary)
            new = await recover_from_crash(lab, seen, primary)
    print(f"\n[faults] node crash: {len(seen.errors)} client errors")  # noqa: T201
    assert sorted(lab.running_nodes()) == sorted(["n1", "n2", "n3", APP_NODE])
    assert await assert_converged(lab, seen) == new


# --------------------------------------------------------------------------- fencing
RESULTS: Final = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "faults.json"
_COMMITS_AFTER: Final = 20  # commits on the new primary before the case ends


def pacemaker_lines(lab: Lab) -> list[str]:
    """Every Postgres node's pacemaker.log lines (a fenced node's file survives it)."""
    lines: list[str] = []
    for node in lab.topology.nodes:
        log = lab.host_path(node.name, "/var/log/pacemaker/pacemaker.log")
        if log.exists():
            lines += log.read_text(encoding="utf-8", errors="replace").splitlines()
    return lines


def record(case: str, result: dict[str, object]) -> None:
    """Merge one case's measurements into benchmarks/results/faults.json."""
    try:
        data = json.loads(RESULTS.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        data = {}
    data[case] = {**result, "at": datetime.now(UTC).isoformat(timespec="seconds")}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _stamp(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["ts"])).timestamp()


async def first_commit_after_last_ack(
    lab: Lab, log: ClientsLog, at: float, new: str
) -> float | None:
    """Seconds from the last proxy's acknowledgement of ``new`` to the first commit.

    Negative when a client committed before the slowest proxy acknowledged (clients use
    the app node's proxy only). None when either is missing.
    """
    first = log.first_success_after(at)
    host = address(lab, new)
    acks = [
        json.loads(raw) for raw in (await etcd_get_prefix(lab, f"{NAMESPACE}/proxies/")).values()
    ]
    applied = [datetime.fromisoformat(a["applied_at"]).timestamp() for a in acks
               if isinstance(a, dict) and a.get("host") == host]  # fmt: skip
    if first is None or not applied:
        return None
    return round(at + first - max(applied), 3)


def hold_seen(lab: Lab, log: ClientsLog, at: float) -> dict[str, object]:
    """When the app node's proxy held clients after the fault at ``at``, and who failed.

    ``errors_begun_in_hold`` counts failed transactions that began while the hold was in
    force (from ``_HOLD_GRACE_S`` after it started, the time PAUSE takes to arrive):
    they should have waited for the new primary instead.
    """
    starts = [_stamp(e) for e in service_events(lab, APP_NODE, "pgcm-proxy", "proxy.hold.start")
              if _stamp(e) >= at]  # fmt: skip
    if not starts:
        return {"hold": None}
    begun = starts[0]
    ends = [e for e in service_events(lab, APP_NODE, "pgcm-proxy", "proxy.hold.end")
            if _stamp(e) >= begun]  # fmt: skip
    ended = _stamp(ends[0]) if ends else None
    in_hold = [o for o in log.errors if o.started >= begun + _HOLD_GRACE_S
               and (ended is None or o.started <= ended)]  # fmt: skip
    return {
        "hold": {
            "started_s": round(begun - at, 3),
            "ended_s": None if ended is None else round(ended - at, 3),
            "outcome": None if not ends else ends[0].get("outcome"),
        },
        "errors_begun_in_hold": len(in_hold),
    }


async def fenced_failover(
    lab: Lab, case: str, fault: Callable[[str], Awaitable[object]]
) -> dict[str, object]:
    """Under reconnecting clients, break the primary with ``fault``; check the outcome.

    Pacemaker must fence the primary's node (it ends powered off), promote a standby,
    pgcm must publish it and every proxy follow; the clients must commit on the new
    primary and lose no acknowledged commit. Then the fenced node rejoins as a standby.
    Returns (and records) what the clients saw and Pacemaker's own times.
    """
    async with reconnecting_clients(lab, clients=4) as log:
        with anyio.fail_after(240):
            primary = await lab.wait_healthy()
            await wait_pgcm_ready(lab, primary)
            await fault(primary)
            at = log.mark_fault(case)
            survivors = [n.name for n in lab.topology.others(primary)]
            new = await lab.wait_healthy(expect=survivors, clean_up_after=_CLEAN_UP_AFTER_S)
            assert lab.init_pid(primary) is None, f"{primary} was not fenced (powered off)"
            await wait_pgcm_ready(lab, new)
            for name in lab.running_nodes():
                while await routed_host(lab, name) != address(lab, new):
                    await anyio.sleep(0.1)
            while log.successes_after(at) < _COMMITS_AFTER:  # new transactions commit
                await anyio.sleep(0.1)
    assert await check_commits(lab, log) == [], "acknowledged commits lost"
    report = log.report()
    # Pacemaker logs local time without a year: compare in the same terms.
    origin = datetime.fromtimestamp(at)  # noqa: DTZ006
    marks = failover_marks(pacemaker_lines(lab), primary, origin)
    result: dict[str, object] = {
        "first_commit_after_fault_s": log.first_success_after(at),
        "client_errors": report["errors"],
        "error_classes": report["error_classes"],
        "longest_gap_s": report["longest_gap_s"],
        "committed": report["committed"],
        "pacemaker_s": {
            mark: round((stamp - origin.replace(year=stamp.year)).total_seconds(), 3)
            for mark, stamp in marks.items()
        },
        "old_primary": primary,
        "new_primary": new,
        **hold_seen(lab, log, at),
        "first_commit_after_last_ack_s": await first_commit_after_last_ack(lab, log, at, new),
    }
    print(f"\n[faults] {case}: {json.dumps(result)}")  # noqa: T201
    assert {"fenced", "promoted"} <= set(marks), f"Pacemaker's logs lack steps: {marks}"
    with anyio.fail_after(360):  # a rewind that does not stream is followed by a full copy
        result["rejoin"] = await lab.rejoin(primary)
    record(case, result)
    return result


async def test_hung_postgresql_on_the_primary_is_fenced_and_a_standby_promoted(lab: Lab) -> None:
    """Every postgres process of the primary SIGSTOPped: the monitor times out, fencing."""
    await fenced_failover(lab, "hung_postgresql", lambda p: lab.hang(p, only="postgres"))


async def test_hung_primary_node_is_fenced_and_a_standby_promoted(lab: Lab) -> None:
    """Everything in the primary's node SIGSTOPped, corosync too: the node is lost, fenced."""
    await fenced_failover(lab, "hung_node", lab.hang)


async def test_primary_node_crash_under_reconnecting_clients(lab: Lab) -> None:
    """The primary's node SIGKILLed under four reconnecting clients."""
    await fenced_failover(lab, "node_crash", lab.kill_node)


async def test_partitioned_primary_under_reconnecting_clients(lab: Lab) -> None:
    """The primary's node cut off at the bridge: the majority fences it and promotes."""
    await fenced_failover(lab, "partition", lab.partition)


async def test_a_stop_that_fails_gets_the_node_fenced_and_a_standby_promoted(lab: Lab) -> None:
    """The primary is moved away but its PostgreSQL cannot be stopped: fencing ends it.

    Without its postmaster.pid, ``pg_ctl stop`` (PAF's demote, then the stop of the
    recovery) fails although PostgreSQL runs on: only fencing the node can stop it.
    """

    async def unstoppable_then_moved(primary: str) -> None:
        lab.host_path(primary, f"{PGDATA}/postmaster.pid").unlink()
        await lab.exec(primary, ["crm_resource", "--resource", CLONE, "--ban", "--node",
                                 primary, "--lifetime", "PT10M"])  # fmt: skip

    await fenced_failover(lab, "failed_stop", unstoppable_then_moved)
