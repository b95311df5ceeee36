"""``pgcm-lab``: bring the lab up, look at it, break it, mend it, take it down."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import anyio

from pgcm_lab.clientrun import check_commits, reconnecting_clients
from pgcm_lab.errors import LabError
from pgcm_lab.fleet import Fleet
from pgcm_lab.lab import DEFAULT_STATE_DIR, Lab, Service
from pgcm_lab.pgcm import failover_argv, start_pgcm
from pgcm_lab.probe import NO_ANSWER, PROBE_TIMEOUT_S
from pgcm_lab.topology import AGENTS

__all__ = ["main"]

_RESULTS_ENV = "PGCM_LAB_RESULTS"
FAULTS = ("kill-node", "partition", "hang-postgres", "hang-node")
_STATE_ENV = "PGCM_LAB_DIR"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgcm-lab",
        description="A real 3-node Pacemaker + PAF + PostgreSQL 15 + etcd + PgBouncer "
        "cluster in Linux namespaces (root only, no Docker).",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get(_STATE_ENV, str(DEFAULT_STATE_DIR))),
        help=f"lab state (default ${_STATE_ENV} or {DEFAULT_STATE_DIR})",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="bring the lab up and wait until it is healthy")
    up.add_argument("--services", type=Path, help="TOML file of [[service]] to start in nodes")
    up.add_argument("--results", type=Path, help="JSON file to record the up time in")
    up.add_argument("--agent", choices=AGENTS,
                    help="resource agent: pgsqlms (PAF, default) or pgsql (the legacy "
                    "ocf:heartbeat:pgsql, clone msPostgresql, as the original "
                    "pgsql-cluster-manager expects); without it, the agent of a "
                    "half-built lab being replaced, else pgsqlms")  # fmt: skip
    up.add_argument("--with-pgcm", action="store_true",
                    help="also run pgcm: supervise on every Postgres node, proxy on every "
                    "node (and the Pacemaker alert agent)")  # fmt: skip
    down = sub.add_parser("down", help="remove everything the lab made")
    down.add_argument("--results", type=Path, help="JSON file to record the down time in")
    status = sub.add_parser("status", help="nodes, roles, scores, etcd and pgbouncers")
    status.add_argument("--json", action="store_true", help="print JSON")
    switch = sub.add_parser("switchover", help="move the primary to node N (Pacemaker's move)")
    switch.add_argument("node")
    switch.add_argument("--no-repoint", action="store_true",
                        help="leave PgBouncers alone (when pgcm-proxy re-points them)")  # fmt: skip
    for name, text in (
        ("kill-node", "SIGKILL every process of node N"),
        ("start-node", "start a stopped node N again"),
        ("partition", "cut node N off the network"),
        ("heal", "reconnect node N"),
        ("rejoin", "rebuild ex-primary N as a standby (pg_rewind, else pg_basebackup)"),
        ("crm-mon", "print crm_mon XML as node N sees it"),
    ):
        sub.add_parser(name, help=text).add_argument("node")
    hang = sub.add_parser(
        "hang", help="SIGSTOP every process of node N (or only those named --only COMM)"
    )
    hang.add_argument("node")
    hang.add_argument("--only", metavar="COMM", help="only processes with this command name")
    sub.add_parser("unhang", help="SIGCONT every process of node N").add_argument("node")
    exe = sub.add_parser("exec", help="run a command inside node N: exec N -- CMD")
    exe.add_argument("node")
    exe.add_argument("argv", nargs=argparse.REMAINDER)
    fail = sub.add_parser(
        "pgcm-failover", help="run pgcm-failover in the app node: pgcm-failover -- [ARGS]"
    )
    fail.add_argument("argv", nargs=argparse.REMAINDER)
    fleet = sub.add_parser(
        "fleet",
        help="replace the app node's extra pgcm-proxy + PgBouncer pairs by N of them "
        "(0 stops them); needs the lab with pgcm",
    )
    fleet.add_argument("size", type=int)
    load = sub.add_parser("load", help="pgbench through the app node's PgBouncer")
    load.add_argument("--seconds", type=float, default=10)
    load.add_argument("--clients", type=int, default=4)
    load.add_argument("--json", action="store_true", help="print JSON")
    clients = sub.add_parser(
        "clients",
        help="reconnecting clients through the app node's PgBouncer, optionally with a fault",
    )
    clients.add_argument("--clients", type=int, default=4)
    clients.add_argument("--seconds", type=float, default=20, help="total run time")
    clients.add_argument("--fault", choices=FAULTS, help="what to do to --node after --at s")
    clients.add_argument("--node", help="the node to break (default: the primary)")
    clients.add_argument("--at", type=float, default=5, help="seconds before the fault")
    clients.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _default_results() -> Path | None:
    env = os.environ.get(_RESULTS_ENV)
    if env:
        return Path(env)
    bench = Path.cwd() / "benchmarks"
    return bench / "results" / "lab.json" if bench.is_dir() else None


def record_result(path: Path | None, key: str, seconds: float) -> None:
    """Merge ``key: seconds`` into the JSON results file (for the benchmarks)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        data = {}
    data[key] = round(seconds, 3)
    data[f"{key}_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_services(path: Path | None) -> list[Service]:
    """Read ``[[service]]`` tables from a TOML file."""
    if path is None:
        return []
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return [Service.from_dict(item) for item in data.get("service", [])]


def _print_status(status: dict[str, object]) -> None:
    out = sys.stdout
    out.write(
        f"lab: {'up' if status['up'] else 'down'}  primary: {status['primary']}  "
        f"quorum: {status['quorum']}  dc: {status['dc']}\n"
    )
    out.write(f"{'node':<5} {'address':<13} {'role':<10} {'score':>6} {'etcd':<5} {'pgbouncer'}\n")
    nodes = status["nodes"]
    assert isinstance(nodes, list)  # noqa: S101  # built by Lab.status
    for node in nodes:
        role = node.get("role", "app" if node["running"] else "down")
        score = node.get("score")
        out.write(
            f"{node['name']:<5} {node['address']:<13} {role:<10} "
            f"{'' if score is None else score:>6} {_yes(node.get('etcd')):<5} "
            f"{_yes(node.get('pgbouncer'))}\n"
        )
    silent = status.get("no_answer")
    if isinstance(silent, list) and silent:
        out.write(f"no answer within {PROBE_TIMEOUT_S:g}s from: {', '.join(map(str, silent))}\n")


def _yes(value: object) -> str:
    if value == NO_ANSWER:
        return "NO-ANSWER"
    return "-" if value is None else ("ok" if value else "FAIL")


async def _run(args: argparse.Namespace) -> int:  # noqa: C901, PLR0911, PLR0912, PLR0915
    command: str = args.command
    lab = Lab(args.state_dir)
    if command == "up" and args.agent is not None:
        # Every other command reads the agent back from the state dir.
        lab = Lab(args.state_dir, topology=replace(lab.topology, agent=args.agent))
    if command == "up":
        seconds = await lab.up(load_services(args.services))
        record_result(args.results or _default_results(), "up_seconds", seconds)
        if args.with_pgcm:
            await start_pgcm(lab)
    elif command == "down":
        seconds = await lab.down()
        record_result(args.results or _default_results(), "down_seconds", seconds)
    elif command == "status":
        status = await lab.status()
        if args.json:
            sys.stdout.write(json.dumps(status, indent=2) + "\n")
        else:
            _print_status(status)
    elif command == "switchover":
        await lab.switchover(args.node, repoint=not args.no_repoint)
    elif command == "kill-node":
        await lab.kill_node(args.node)
    elif command == "start-node":
        await lab.start_node(args.node)
    elif command == "partition":
        await lab.partition(args.node)
    elif command == "heal":
        await lab.heal(args.node)
    elif command == "rejoin":
        await lab.rejoin(args.node)
    elif command == "hang":
        stopped = await lab.hang(lab.topology.node(args.node).name, only=args.only)
        sys.stdout.write(" ".join(map(str, stopped)) + "\n")
    elif command == "unhang":
        await lab.unhang(args.node)
    elif command == "crm-mon":
        sys.stdout.write(await lab.crm_mon_xml(lab.topology.node(args.node).name))
    elif command == "exec":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            sys.stderr.write("pgcm-lab exec N -- CMD: no command given\n")
            return 2
        name = lab.topology.node(args.node).name
        result = await lab.exec(name, argv, check=False)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        return result.returncode
    elif command == "pgcm-failover":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        done = await anyio.run_process(
            failover_argv(lab, argv), stdout=None, stderr=None, check=False
        )
        return done.returncode
    elif command == "fleet":
        return await _fleet(lab, args.size)
    elif command == "load":
        report = await lab.load(args.seconds, args.clients)
        if args.json:
            sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n")
        else:
            _print_load(report.as_dict())
        return 0
    elif command == "clients":
        seen = await _clients(lab, args)
        if args.json:
            sys.stdout.write(json.dumps(seen, indent=2) + "\n")
        else:
            _print_clients(seen)
        return 1 if seen["lost"] else 0
    return 0


async def _fleet(lab: Lab, size: int) -> int:
    if size < 0:
        sys.stderr.write("pgcm-lab fleet N: N must be 0 or more\n")
        return 2
    fleet = Fleet(lab)
    await fleet.stop()
    if size == 0:
        return 0
    primary = await lab.primary()
    if primary is None:
        raise LabError("no primary: the fleet's proxies would have nothing to acknowledge")
    with anyio.fail_after(max(120, 6 * size)):  # ~2 s a proxy on a loaded 2-core machine
        await fleet.start(size, str(lab.topology.node(primary).address))
    usage = fleet.memory()
    rss = sum(m.rss_kb for m in usage.values()) // 1024
    pss = sum(m.pss_kb for m in usage.values()) // 1024
    sys.stdout.write(f"fleet: {size} pairs running; RSS {rss} MB, PSS {pss} MB in total\n")
    return 0


async def inject(lab: Lab, fault: str, node: str) -> None:
    """Do ``fault`` (one of :data:`FAULTS`) to ``node``."""
    if fault == "kill-node":
        await lab.kill_node(node)
    elif fault == "partition":
        await lab.partition(node)
    elif fault == "hang-postgres":
        await lab.hang(node, only="postgres")
    elif fault == "hang-node":
        await lab.hang(node)


async def _clients(lab: Lab, args: argparse.Namespace) -> dict[str, object]:
    async with reconnecting_clients(lab, clients=args.clients) as log:
        start = anyio.current_time()
        if args.fault:
            await anyio.sleep(args.at)
            node = args.node or await lab.primary()
            if node is None:
                raise LabError("no primary to break")
            await inject(lab, args.fault, lab.topology.node(node).name)
            log.mark_fault(f"{args.fault} {node}")
        await anyio.sleep(max(0.0, args.seconds - (anyio.current_time() - start)))
    report = log.report()
    try:
        lost = await check_commits(lab, log)
    except LabError as exc:
        report["lost"] = f"not checked: {exc}"
    else:
        report["lost"] = [list(item) for item in lost]
    return report


def _print_clients(report: dict[str, object]) -> None:
    lines = [
        (
            f"clients: {report['clients']}  transactions: {report['transactions']}  "
            f"committed: {report['committed']}  errors: {report['errors']} "
            f"{report['error_classes']}"
        ),
        f"longest gap between commits: {report['longest_gap_s']} s",
    ]
    faults = report["faults"]
    assert isinstance(faults, list)  # noqa: S101  # built by ClientsLog.report
    lines += [f"{f['fault']}: first commit {f['first_success_s']} s after it" for f in faults]
    errors = report["error_list"]
    assert isinstance(errors, list)  # noqa: S101  # built by ClientsLog.report
    lines += [f"  {e['at_s']:+8.3f} s client {e['client']}: {e['class']}: {e['message']}"
              for e in errors[:20]]  # fmt: skip
    lines.append(f"acknowledged commits lost: {report['lost'] or 'none'}")
    sys.stdout.write("\n".join(lines) + "\n")


def _print_load(report: dict[str, object]) -> None:
    lines = [
        f"clients: {report['clients']}  seconds: {report['seconds']}",
        f"transactions: {report['transactions']}  tps: {report['tps']}",
        (
            f"failed transactions: {report['failed_transactions']}  "
            f"aborted clients: {report['aborted_clients']}"
        ),
        f"latency avg: {report['latency_avg_ms']} ms  max: {report['latency_max_ms']} ms",
    ]
    errors = report["errors"]
    assert isinstance(errors, list)  # noqa: S101  # built by LoadReport.as_dict
    lines += [f"error seen: {e}" for e in errors[:10]]
    sys.stdout.write("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    args = _parser().parse_args(argv)
    try:
        return anyio.run(_run, args, backend="asyncio")
    except (LabError, KeyError) as exc:
        sys.stderr.write(f"pgcm-lab: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
