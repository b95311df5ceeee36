"""The migrate's CIB write: ``crm_resource --move --promoted`` against ``cibadmin``.

pgcm-supervise writes the move constraint with ``cibadmin`` once ``choose_target`` has
checked the target, and keeps ``crm_resource --move`` for a banned target. This measures
what that saves, in pairs: in the 3-node lab (no pgcm, no load) a dummy promotable clone
(``ocf:pacemaker:Stateful``) is moved ``PAIRS`` times with each tool, the order
alternating within each pair, and each tool's run is timed inside the node from its
start to its exit (the node's own clock, no ``nsenter`` in the figure). After every move
the constraint is cleared and the cluster settles before the next one. Needs root.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path
from typing import Final

import anyio

from pgcm_lab.lab import Lab, Progress, lab_leftovers
from pgcm_supervise.pacemaker_control import move_promoted_argv, prefer_promoted_argv

DESCRIPTION = (
    "The move constraint written by crm_resource --move --promoted and by cibadmin, "
    "paired, in the idle 3-node lab (a dummy promotable clone): each tool's run time."
)
STATE_DIR: Final = Path("/var/tmp/pgcm-lab-bench-move")  # noqa: S108  # postgres must traverse it
PAIRS: Final = int(os.environ.get("PGCM_BENCH_MOVE_PAIRS", "10"))
NODE: Final = "n1"
CLONE: Final = "bench-move-ha"
_CLONE_XML: Final = (
    f'<clone id="{CLONE}"><meta_attributes id="{CLONE}-meta">'
    f'<nvpair id="{CLONE}-promotable" name="promotable" value="true"/></meta_attributes>'
    f'<primitive id="{CLONE}-rsc" class="ocf" provider="pacemaker" type="Stateful"/></clone>'
)
# Runs one tool inside the node and prints "<exit status> <nanoseconds>".
_TIMED: Final = (
    't0=$(date +%s%N); "$@" >/dev/null 2>&1; rc=$?; t1=$(date +%s%N); echo "$rc $((t1 - t0))"'
)


def _argv(tool: str, node: str) -> tuple[str, ...]:
    # The very argv pgcm-supervise runs for each tool.
    if tool == "crm_resource":
        return move_promoted_argv(CLONE, node)
    return prefer_promoted_argv(CLONE, node)


async def _promoted_on(lab: Lab) -> str:
    out = await lab.exec(NODE, ["crm_resource", "--resource", CLONE, "--locate"])
    for line in out.stdout.splitlines():
        if "Promoted" in line or "Master" in line:
            return line.split("running on:", 1)[1].split()[0]
    raise RuntimeError(f"{CLONE} is promoted nowhere: {out.stdout!r}")


async def _settle(lab: Lab) -> None:
    await lab.exec(NODE, ["crm_resource", "--wait", "--timeout", "60s"])


async def _timed_move(lab: Lab, tool: str) -> float:
    """Move the clone's promoted role off its node with ``tool``; return the tool's ms."""
    source = await _promoted_on(lab)
    target = next(n for n in ("n1", "n2", "n3") if n != source)
    result = await lab.exec(NODE, ["sh", "-c", _TIMED, "timed", *_argv(tool, target)])
    status, nanoseconds = result.stdout.split()
    if status != "0":
        raise RuntimeError(f"{tool} exited {status} moving {CLONE} to {target}")
    await _settle(lab)
    if await _promoted_on(lab) != target:
        raise RuntimeError(f"{tool}'s constraint did not move {CLONE} to {target}")
    await lab.exec(NODE, ["crm_resource", "--resource", CLONE, "--clear"])
    await _settle(lab)
    return int(nanoseconds) / 1e6


async def _bench(lab: Lab) -> dict[str, object]:
    up_s = await lab.up()
    await lab.exec(NODE, ["cibadmin", "--create", "--scope", "resources", "--xml-text", _CLONE_XML])
    try:
        await _settle(lab)
        times: dict[str, list[float]] = {"crm_resource": [], "cibadmin": []}
        for pair in range(PAIRS):
            order = ("crm_resource", "cibadmin") if pair % 2 == 0 else ("cibadmin", "crm_resource")
            for tool in order:
                times[tool].append(await _timed_move(lab, tool))
    finally:
        with anyio.CancelScope(shield=True):
            await lab.exec(NODE, ["crm_resource", "--resource", CLONE, "--clear"], check=False)
            await lab.exec(
                NODE,
                [
                    "cibadmin",
                    "--delete",
                    "--scope",
                    "resources",
                    "--xml-text",
                    f'<clone id="{CLONE}"/>',
                ],
                check=False,
            )
    saved = [c - d for c, d in zip(times["crm_resource"], times["cibadmin"], strict=True)]
    return {
        "pairs": PAIRS,
        "lab_up_s": round(up_s, 2),
        "crm_resource_median_ms": round(statistics.median(times["crm_resource"]), 1),
        "crm_resource_max_ms": round(max(times["crm_resource"]), 1),
        "cibadmin_median_ms": round(statistics.median(times["cibadmin"]), 1),
        "cibadmin_max_ms": round(max(times["cibadmin"]), 1),
        "saved_per_move_median_ms": round(statistics.median(saved), 1),
        "cibadmin_faster_pairs": sum(1 for s in saved if s > 0),
        "per_pair_ms": [
            {"crm_resource": round(c, 1), "cibadmin": round(d, 1)}
            for c, d in zip(times["crm_resource"], times["cibadmin"], strict=True)
        ],
        "host_load_1m": round(os.getloadavg()[0], 2),
    }


def run() -> dict[str, object]:
    """Bring the lab up, time ``PAIRS`` moves with each tool, tear it down."""
    if lab_leftovers(Lab(STATE_DIR, progress=Progress(None))):
        raise RuntimeError("a lab is already running")
    lab = Lab(STATE_DIR, progress=Progress(sys.stderr))
    try:
        return anyio.run(_bench, lab)
    finally:
        anyio.run(lab.down)
