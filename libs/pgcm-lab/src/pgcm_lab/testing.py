"""Helpers for test suites that drive the lab with pgcm running (tests/e2e, tests/faults).

Package code rather than a conftest so that both suites import one copy.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import final

import anyio

from pgcm_lab.errors import LabError
from pgcm_lab.lab import Lab, Progress
from pgcm_lab.pgcm import failover_argv, start_pgcm

__all__ = [
    "FailoverRun",
    "address",
    "bouncer_answers",
    "routed_host",
    "run_failover",
    "running_lab_with_pgcm",
]


async def _up(lab: Lab) -> None:
    await lab.up()
    await start_pgcm(lab)


@contextmanager
def running_lab_with_pgcm(state_dir: Path, *, logs_dir: Callable[[], Path]) -> Iterator[Lab]:
    """Bring the lab up with pgcm; on exit copy every node's logs out, then ``down``.

    ``down`` runs also when start-up or the suite failed, so nothing is left behind.
    """
    the_lab = Lab(state_dir, progress=Progress(sys.stderr))
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
