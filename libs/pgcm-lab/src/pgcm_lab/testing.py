"""Helpers for test suites that drive the lab with pgcm running (tests/e2e, tests/faults).

Package code rather than a conftest so that both suites import one copy.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import final

import anyio

from pgcm_lab.errors import LabError
from pgcm_lab.lab import Lab, Progress
from pgcm_lab.pgcm import (
    MASTER_KEY,
    NAMESPACE,
    etcd_get,
    etcd_get_prefix,
    failover_argv,
    start_pgcm,
)
from pgcm_lab.topology import Topology

__all__ = [
    "FailoverRun",
    "address",
    "bouncer_answers",
    "last_promotion",
    "promotion_latencies",
    "routed_host",
    "run_failover",
    "running_lab_with_pgcm",
    "service_events",
]


async def _up(lab: Lab) -> None:
    await lab.up()
    await start_pgcm(lab)


@contextmanager
def running_lab_with_pgcm(
    state_dir: Path, *, logs_dir: Callable[[], Path], topology: Topology | None = None
) -> Iterator[Lab]:
    """Bring the lab up with pgcm; on exit copy every node's logs out, then ``down``.

    ``down`` runs also when start-up or the suite failed, so nothing is left behind.
    ``topology``: another shape than the default (e.g. the legacy agent's).
    """
    the_lab = Lab(state_dir, topology=topology, progress=Progress(sys.stderr))
    try:
        anyio.run(_up, the_lab)
        yield the_lab
    finally:
        try:
            _copy_logs(the_lab, logs_dir())
        finally:
            anyio.run(the_lab.down)


def _copy_logs(lab: Lab, target: Path) -> None:
    nodes = lab.state_dir / "nodes"
    if nodes.is_dir():
        shutil.copytree(
            nodes,
            target / "nodes",
            ignore=shutil.ignore_patterns("var-lib-*", "run", "etc-*", "hosts"),
            dirs_exist_ok=True,
        )
        sys.stderr.write(
            f"\nlab logs copied to {target} (kept after the session only with "
            "PGCM_KEEP_TEST_DIRS=1 and a failure)\n"
        )


@final
@dataclass(frozen=True, slots=True)
class FailoverRun:
    """A finished pgcm-failover run: exit code, its JSON output, its logs."""

    returncode: int
    data: dict[str, object]
    logs: str


async def run_failover(lab: Lab, *args: str) -> FailoverRun:
    """Run ``pgcm-failover ARGS --json`` in the app node and parse its output.

    Raises:
        LabError: the output is not a JSON object.
    """
    result = await lab.run(failover_argv(lab, [*args, "--json"]), check=False)
    data = json.loads(result.stdout) if result.stdout.strip() else {}
    if not isinstance(data, dict):
        raise LabError(f"pgcm-failover printed {type(data).__name__}, not a JSON object")
    return FailoverRun(result.returncode, {str(k): v for k, v in data.items()}, result.stderr)


def address(lab: Lab, node: str) -> str:
    """Return the lab address of ``node``."""
    return str(lab.topology.node(node).address)


async def routed_host(lab: Lab, node: str) -> str | None:
    """Return where node ``node``'s PgBouncer routes database ``postgres`` (SHOW DATABASES).

    None when the console does not answer (PgBouncer restarting) or has no such row.
    """
    argv = ["psql", "-X", "-h", "/run/pgbouncer", "-p", "6432", "-U", "postgres", "-d",
            "pgbouncer", "-qAt", "-c", "SHOW DATABASES"]  # fmt: skip
    out = await lab.exec(node, argv, user="postgres", check=False)
    for line in out.stdout.splitlines():
        fields = line.split("|")
        if fields[0] == "postgres":
            return fields[1]
    return None


async def bouncer_answers(lab: Lab, node: str, seconds: int = 5) -> bool:
    """Return whether a query through node ``node``'s PgBouncer completes within ``seconds``."""
    argv = ["timeout", str(seconds), "psql", "-X", "-h", "/run/pgbouncer", "-p", "6432",
            "-U", "postgres", "-d", "postgres", "-qAt", "-c", "select 1"]  # fmt: skip
    result = await lab.exec(node, argv, user="postgres", check=False)
    return result.returncode == 0 and result.stdout.strip() == "1"


# PostgreSQL's log (log_line_prefix '%m [%p] ': milliseconds, with the zone).
_PG_STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \S+) \[\d+\] "
_PROMOTE_REQUEST = re.compile(_PG_STAMP + r"LOG:  received promote request")
_ACCEPTS_WRITES = re.compile(_PG_STAMP + r"LOG:  database system is ready to accept connections")


def last_promotion(lab: Lab, node: str) -> datetime:
    """When ``node``'s PostgreSQL last became writable after a promote (its own log).

    The first "ready to accept connections" after the last "received promote request":
    the moment clients could write to the new primary. Pacemaker's "Result of promote"
    log line comes later (PAF checks the promoted instance first) and only to the
    millisecond of a clock without a zone.

    Raises:
        LabError: the log shows no completed promotion.
    """
    log = lab.node_dir(node) / "var-log-postgresql" / "postgresql.log"
    requested = writable = None
    for line in log.read_text(errors="replace").splitlines():
        if _PROMOTE_REQUEST.match(line):
            requested, writable = line, None
        elif requested is not None and writable is None and (match := _ACCEPTS_WRITES.match(line)):
            writable = match.group(1)
    if writable is None:
        raise LabError(f"no completed promotion in {log}")
    day_time, zone = writable.rsplit(" ", 1)
    if zone != "UTC":
        raise LabError(f"{log}: expected UTC timestamps, got {zone}")
    return datetime.fromisoformat(f"{day_time}+00:00")


def service_events(lab: Lab, node: str, service: str, event: str) -> list[dict[str, object]]:
    """The JSON log lines of ``service`` in ``node`` whose event is ``event``, in order.

    Each carries ``ts`` (ISO, UTC). Lines that are not JSON objects (a restart notice
    of the lab's supervisor loop) are skipped.
    """
    path = lab.node_dir(node) / "services" / f"{service}.log"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    found: list[dict[str, object]] = []
    for line in lines:
        if f'"{event}"' not in line:
            continue
        try:
            record = _object(line[line.index("{") :])
        except (ValueError, LabError):
            continue
        if record.get("event") == event:
            found.append(record)
    return found


def _object(raw: str) -> dict[str, object]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise LabError(f"expected a JSON object, got {raw[:80]!r}")
    return {str(k): v for k, v in value.items()}


async def promotion_latencies(lab: Lab, node: str) -> dict[str, float]:
    """Milliseconds from ``node`` becoming writable to etcd's record and the last ack.

    Raises:
        LabError: no promotion logged, no primary record or no acknowledgement in etcd.
    """
    promoted = last_promotion(lab, node)
    raw = await etcd_get(lab, f"{NAMESPACE}{MASTER_KEY}.json")
    if raw is None:
        raise LabError("no primary record in etcd")
    observed = datetime.fromisoformat(str(_object(raw)["observed_at"]))
    acks = await etcd_get_prefix(lab, f"{NAMESPACE}/proxies/")
    if not acks:
        raise LabError("no proxy acknowledgement in etcd")
    applied = max(datetime.fromisoformat(str(_object(v)["applied_at"])) for v in acks.values())
    return {
        "promotion_to_etcd_ms": round((observed - promoted).total_seconds() * 1000, 1),
        "promotion_to_last_ack_ms": round((applied - promoted).total_seconds() * 1000, 1),
    }
