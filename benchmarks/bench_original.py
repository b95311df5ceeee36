# ruff: noqa: ASYNC110  # polling other processes' state: there is no event to await
"""Side by side with the original: switchovers by pgsql-cluster-manager and by pgcm.

One netns lab whose PostgreSQL runs under the legacy ``ocf:heartbeat:pgsql`` agent with
the clone named ``msPostgresql`` (``pgcm-lab up --agent pgsql``): the only Pacemaker
set-up the original reads (``cibadmin`` node attributes ``pgsql-data-status``, ``crm
resource migrate msPostgresql``, ``corosync-cfgtool -a``). The original's binary is
built from the checkout in ``PGCM_BENCH_ORIGINAL_SRC`` (:mod:`original`); without it
the benchmark is skipped and says why.

First the original: its ``supervise`` on every Postgres node, its ``proxy`` on every
node (the same PgBouncers, pgbouncer.ini rendered from the same template as pgcm's,
a Go template with ``{{.Host}}``), then ``RUNS`` times its ``failover`` from the app
node. Then its daemons are stopped, pgcm starts (supervise, proxies, alert agent) and
runs ``RUNS`` ``pgcm-failover`` switchovers. Every switchover happens under the same
pgbench load (``CLIENTS`` clients, ``LOAD_S`` s, through the app node's PgBouncer) once
every client is connected. Per run: what the clients saw (failed transactions, aborted
clients, max latency), the PgBouncer paused time (pgcm: its report; the original: from
its own log, the pause request to the last RESUME answer) and the command's wall time.

The legacy agent keeps an ex-primary stopped until its ``PGSQL.lock`` is removed; after
each switchover the benchmark removes it and cleans the instance up, as the operator
would (``Lab.readmit_legacy_standbys``), before the next run. Results go to
``results/original.json``. Needs root, Go and the checkout.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from subprocess import CompletedProcess
from typing import Final

import anyio
import original

from pgcm_lab.errors import LabError
from pgcm_lab.lab import Lab, Progress, Service, lab_leftovers
from pgcm_lab.load import LoadReport
from pgcm_lab.pgcm import etcd_get, failover_argv, start_pgcm, wait_pgcm_ready
from pgcm_lab.pgcmconf import render_pgbouncer_template
from pgcm_lab.testing import routed_host
from pgcm_lab.topology import APP_NODE, Node, Topology

DESCRIPTION = (
    "The original pgsql-cluster-manager (built from PGCM_BENCH_ORIGINAL_SRC) and pgcm, "
    "RUNS switchovers each in one lab with the legacy ocf:heartbeat:pgsql agent under "
    "pgbench (4 clients, 15 s, via the app PgBouncer): max latency median/p99, failed "
    "transactions, paused time."
)
STATE_DIR: Final = Path("/var/tmp/pgcm-lab-bench-original")  # noqa: S108  # postgres traverses it
RUNS: Final = int(os.environ.get("PGCM_BENCH_RUNS", "5"))
CLIENTS: Final = 4
LOAD_S: Final = 15
ORIGINAL_NAMESPACE: Final = "/postgres"
ORIGINAL_MASTER_KEY: Final = "/master"
ORIGINAL_PORT: Final = 8080
# Inside every node (the app node too) /etc/pgbouncer is private to that node.
ORIGINAL_CONFIG: Final = "/etc/pgbouncer/pgsql-cluster-manager.toml"
ORIGINAL_TEMPLATE: Final = "/etc/pgbouncer/pgbouncer.ini.original-template"
_OUT: Final = Path(os.environ.get("PGCM_BENCH_OUT", str(Path(__file__).resolve().parent)))
_FRACTION: Final = re.compile(r"(\.\d{6})\d+")


def original_config(topology: Topology, node: Node) -> str:
    """The original's config.toml for ``node`` (its flag names, as ``pgcm config show``)."""
    endpoints = [f"http://{n.address}:2379" for n in topology.nodes]
    api = [f"{n.address}:{ORIGINAL_PORT}" for n in topology.nodes]
    lines = [
        f"etcd-endpoints = {json.dumps(endpoints)}",
        f"etcd-namespace = {json.dumps(ORIGINAL_NAMESPACE)}",
        f"etcd-postgres-master-key = {json.dumps(ORIGINAL_MASTER_KEY)}",
        f"failover-api-endpoints = {json.dumps(api)}",
        'pgbouncer-user = "postgres"',
        'pgbouncer-socket-dir = "/run/pgbouncer"',
        'pgbouncer-port = "6432"',
        'pgbouncer-config-file = "/etc/pgbouncer/pgbouncer.ini"',
        f"pgbouncer-config-template-file = {json.dumps(ORIGINAL_TEMPLATE)}",
        # The original's shipped defaults (docker/postgres-member/.../config.toml).
        'pause-timeout = "5s"',
        'pause-expiry = "25s"',
        'pacemaker-timeout = "20s"',
        'pacemaker-poll-interval = "1s"',
    ]
    if not node.is_app:
        lines.append(f'bind-address = "{node.address}:{ORIGINAL_PORT}"')
    return "\n".join(lines) + "\n"


def original_template(node: Node) -> str:
    """pgcm's pgbouncer.ini template for ``node`` plus the line the original insists on.

    The original refuses a template without ``ignore_startup_parameters`` naming
    ``extra_float_digits``; the file ends inside its ``[pgbouncer]`` section.
    """
    text = render_pgbouncer_template(node)
    return text.rstrip("\n") + "\nignore_startup_parameters = extra_float_digits\n"


def _timestamp(value: str) -> float:
    # Go prints nanoseconds; Python parses at most microseconds.
    return datetime.fromisoformat(_FRACTION.sub(r"\1", value)).timestamp()


def original_paused_s(log_lines: Iterable[str]) -> float | None:
    """Seconds from the original's pause request to its last RESUME answer, or None.

    Its failover logs ``clients.pgbouncer.pause`` (``requesting all pgbouncers pause``)
    before pausing, and one ``clients.pgbouncer.resume`` line with ``elapsed`` per node
    once that node's RESUME returned.
    """
    paused: float | None = None
    resumed: float | None = None
    for line in log_lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("ts"), str):
            continue
        event = entry.get("event")
        if event == "clients.pgbouncer.pause" and paused is None and "msg" in entry:
            paused = _timestamp(entry["ts"])
        elif event == "clients.pgbouncer.resume" and "elapsed" in entry:
            resumed = _timestamp(entry["ts"])
    if paused is None or resumed is None or resumed < paused:
        return None
    return round(resumed - paused, 3)


def agent_settled(crm_mon_xml: str) -> bool:
    """Whether the legacy agent names one LATEST node and one STREAMING|SYNC standby.

    The cluster can be healthy (a sync standby in ``pg_stat_replication``) a monitor
    interval before the agent writes ``pgsql-data-status``; the original finds its
    target by that attribute ("failed to find sync node" until then).
    """
    statuses = re.findall(r'name="pgsql-data-status" value="([^"]*)"', crm_mon_xml)
    return statuses.count("LATEST") == 1 and statuses.count("STREAMING|SYNC") == 1


def _values(runs: Sequence[dict[str, object]], key: str) -> list[float]:
    return sorted(float(v) for r in runs if isinstance(v := r.get(key), int | float))


def summarize(runs: Sequence[dict[str, object]]) -> dict[str, object]:
    """Totals, medians and nearest-rank p99s (with under 100 runs: the maximum)."""

    def median(key: str) -> float | None:
        values = _values(runs, key)
        return round(statistics.median(values), 3) if values else None

    def p99(key: str) -> float | None:
        values = _values(runs, key)
        return round(values[math.ceil(0.99 * len(values)) - 1], 3) if values else None

    return {
        "runs": len(runs),
        "succeeded": sum(1 for r in runs if r.get("returncode") == 0),
        "failed_transactions_total": int(sum(_values(runs, "failed_transactions"))),
        "aborted_clients_total": int(sum(_values(runs, "aborted_clients"))),
        "max_latency_median_ms": median("max_latency_ms"),
        "max_latency_p99_ms": p99("max_latency_ms"),
        "paused_median_s": median("paused_s"),
        "paused_p99_s": p99("paused_s"),
        "command_median_s": median("command_s"),
    }


async def _app_clients(lab: Lab) -> int:
    argv = ["psql", "-X", "-h", "/run/pgbouncer", "-p", "6432", "-U", "postgres", "-d",
            "pgbouncer", "-qAt", "-c", "SHOW CLIENTS"]  # fmt: skip
    out = await lab.exec(APP_NODE, argv, user="postgres", check=False)
    return sum(1 for line in out.stdout.splitlines() if "pgbench" in line.split("|"))


async def _whole_again(lab: Lab) -> str:
    """Readmit the ex-primary until the cluster is healthy and settled; the primary.

    Settled: :func:`agent_settled`, as an operator checks before a switchover.
    """
    while True:
        await lab.readmit_legacy_standbys()
        primary, _ = await lab.health()
        if primary is not None and agent_settled(await lab.crm_mon_xml(primary)):
            return primary
        await anyio.sleep(1)


async def _original_ready(lab: Lab, primary: str) -> None:
    """Wait until the original's etcd key and the app PgBouncer name ``primary``."""
    address = str(lab.topology.node(primary).address)
    key = f"{ORIGINAL_NAMESPACE}{ORIGINAL_MASTER_KEY}"
    while await etcd_get(lab, key) != address or await routed_host(lab, APP_NODE) != address:
        await anyio.sleep(0.3)


async def _switch_under_load(
    lab: Lab, command: Callable[[], Awaitable[CompletedProcess[str]]]
) -> tuple[LoadReport, CompletedProcess[str], float]:
    """Run ``command`` once every pgbench client is connected; the clients' report."""
    box: dict[str, LoadReport] = {}

    async def load() -> None:
        box["load"] = await lab.load(seconds=LOAD_S, clients=CLIENTS)

    async with anyio.create_task_group() as tg:
        tg.start_soon(load)
        with anyio.fail_after(30):
            while await _app_clients(lab) < CLIENTS:
                await anyio.sleep(0.1)
        started = time.monotonic()
        result = await command()
        took = time.monotonic() - started
    return box["load"], result, took


def _entry(tool: str, source: str, clients: LoadReport, rc: int, took: float) -> dict[str, object]:
    return {
        "tool": tool,
        "source": source,
        "returncode": rc,
        "failed_transactions": clients.failed_transactions,
        "aborted_clients": clients.aborted_clients,
        "transactions": clients.transactions,
        "max_latency_ms": clients.latency_max_ms,
        "command_s": round(took, 3),
        "errors": list(clients.errors)[:5],
        "host_load_1m": round(os.getloadavg()[0], 2),
    }


async def _original_runs(lab: Lab, binary: Path) -> list[dict[str, object]]:
    for node in lab.topology.all_nodes:
        lab.host_path(node.name, ORIGINAL_CONFIG).write_text(
            original_config(lab.topology, node), encoding="utf-8"
        )
        lab.host_path(node.name, ORIGINAL_TEMPLATE).write_text(
            original_template(node), encoding="utf-8"
        )
    base = (str(binary), "--config-file", ORIGINAL_CONFIG)
    await lab.start_service(Service("original-supervise", "db", (*base, "supervise")))
    await lab.start_service(Service("original-proxy", "all", (*base, "proxy")))
    runs: list[dict[str, object]] = []
    for _ in range(RUNS):
        with anyio.fail_after(180):
            source = await _whole_again(lab)
            await _original_ready(lab, source)
            clients, result, took = await _switch_under_load(
                lab, partial(lab.exec, APP_NODE, [*base, "failover"], check=False)
            )
            entry = _entry("original", source, clients, result.returncode, took)
            # Its log goes to stderr (JSON when not on a terminal).
            entry["paused_s"] = original_paused_s(result.stderr.splitlines())
            entry["target"] = await lab.primary()
            if result.returncode != 0:
                entry["output"] = result.stderr[-1500:]
        runs.append(entry)
        sys.stderr.write(f"original run {len(runs)}: {json.dumps(entry)}\n")
    _stop(binary)
    return runs


async def _pgcm_runs(lab: Lab) -> list[dict[str, object]]:
    await start_pgcm(lab)
    runs: list[dict[str, object]] = []
    for _ in range(RUNS):
        with anyio.fail_after(180):
            source = await _whole_again(lab)
            await wait_pgcm_ready(lab, source)
            # failover_argv enters the app node's network namespace itself.
            argv = failover_argv(lab, ["--log-format", "json", "--yes", "--json"])
            clients, result, took = await _switch_under_load(
                lab, partial(lab.run, argv, check=False)
            )
            entry = _entry("pgcm", source, clients, result.returncode, took)
            entry["paused_s"] = _report(result.stdout).get("paused_seconds")
            entry["target"] = await lab.primary()
            if result.returncode != 0:
                entry["output"] = result.stderr[-1500:]
        runs.append(entry)
        sys.stderr.write(f"pgcm run {len(runs)}: {json.dumps(entry)}\n")
    return runs


def _report(stdout: str) -> dict[str, object]:
    try:
        data = json.loads(stdout)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _stop(binary: Path) -> None:
    """End every process running ``binary`` (the original's daemons), by PID."""
    pids = _pids(str(binary))
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while (left := _pids(str(binary))) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        os.kill(pid, signal.SIGKILL)


def _pids(binary: str) -> list[int]:
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].decode(errors="replace") == binary:
            found.append(int(entry.name))
    return found


async def _bench(lab: Lab, binary: Path) -> dict[str, object]:
    up_s = await lab.up()
    primary = await lab.wait_healthy()
    await lab.exec(primary, ["pgbench", "-i", "-q", "-s", "1", "-h", "/run/postgresql",
                             "postgres"], user="postgres")  # fmt: skip
    original_runs = await _original_runs(lab, binary)
    pgcm_runs = await _pgcm_runs(lab)
    return {
        "lab_up_s": round(up_s, 2),
        "original": summarize(original_runs),
        "pgcm": summarize(pgcm_runs),
        "per_run": [*original_runs, *pgcm_runs],
    }


def run() -> dict[str, object]:
    """Build the original, run both tools' switchovers in one legacy-agent lab."""
    try:
        built = original.build()
    except original.OriginalUnavailable as exc:
        sys.stderr.write(f"bench_original skipped: {exc}\n")
        return {"skipped": str(exc)}
    probe = Lab(STATE_DIR, progress=Progress(None))
    if lab_leftovers(probe):
        raise LabError(f"a lab is already running: {lab_leftovers(probe)}")
    lab = Lab(STATE_DIR, topology=Topology(agent="pgsql"), progress=Progress(sys.stderr))
    try:
        results = anyio.run(_bench, lab, built.binary)
    finally:
        _stop(built.binary)
        anyio.run(lab.down)
    results = {
        "load": f"pgbench -c {CLIENTS} -T {LOAD_S} (TPC-B, scale 1) via app PgBouncer",
        "runs_each": RUNS,
        "agent": "ocf:heartbeat:pgsql (rep_mode=sync, clone msPostgresql)",
        "original_revision": built.revision,
        "readmission": "after each switchover the ex-primary's PGSQL.lock is removed "
        "and its instance cleaned up, as the operator would",
        **results,
    }
    out = _OUT / "results" / "original.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                            "date": datetime.now().astimezone().isoformat(timespec="seconds")},
                "results": results}  # fmt: skip
    out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    sys.stdout.write(json.dumps(run(), indent=2) + "\n")
