# ruff: noqa: ASYNC110  # polling other processes' state: there is no event to await
"""P1 + P3 + P6: switchovers under pgbench in the 3-node lab with pgcm.

Brings the lab up with pgcm (``Lab.up`` then ``start_pgcm``, as ``tests/e2e`` does) in
``/var/tmp/pgcm-lab-bench``, then ``RUNS`` times: pgbench (``CLIENTS`` clients,
``LOAD_S`` seconds) through the app node's PgBouncer, and once every client is
connected, ``pgcm-failover --json`` to the next node. Per run it records what the
clients saw (failed transactions, aborted clients, max latency), the PgBouncer paused
time and each phase's seconds from the failover report, and the promoted PostgreSQL
accepting writes → etcd record → last proxy acknowledgement. The lab is always torn
down; its up and down seconds are P6. Needs root.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Final

import anyio

from pgcm_lab import share
from pgcm_lab.chain import STEPS, promotion_chains
from pgcm_lab.lab import Lab, Progress, lab_leftovers
from pgcm_lab.pgcm import (
    MASTER_KEY,
    NAMESPACE,
    config_path,
    etcd_get,
    etcd_get_prefix,
    failover_argv,
    render_pgcm_toml,
    start_pgcm,
    venv_script,
    wait_pgcm_ready,
)
from pgcm_lab.testing import promotion_latencies

DESCRIPTION = (
    "P1/P3/P6: 10 pgcm-failover switchovers in the 3-node lab under pgbench "
    "(4 clients, 15 s per run, through the app node's PgBouncer); medians and per-run "
    "values, P3 (promoted PostgreSQL accepting writes -> etcd -> last proxy ack) as "
    "p50/p99, Pacemaker/PAF's own move -> promoted chain per step (their logs) and the "
    "paused time beyond it, pgcm's share of it per segment (pgcm_lab.share), plus lab "
    "up/down seconds."
)
STATE_DIR: Final = Path("/var/tmp/pgcm-lab-bench")  # noqa: S108  # postgres must traverse it
RUNS: Final = int(os.environ.get("PGCM_BENCH_RUNS", "10"))
AB_SUPERVISE: Final = os.environ.get("PGCM_BENCH_AB_SUPERVISE", "")
AB_SUPERVISE_A: Final = os.environ.get("PGCM_BENCH_AB_SUPERVISE_A", "")
CLIENTS: Final = 4
LOAD_S: Final = 15


def _dict(value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {value!r}")
    return {str(k): v for k, v in value.items()}


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {value!r}")
    return value


def _float(value: object) -> float:
    if not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


async def _one_run(lab: Lab, target: str) -> dict[str, object]:
    """One switchover to ``target`` under load; return its measurements."""
    box: dict[str, object] = {}

    async def load() -> None:
        box["load"] = await lab.load(seconds=LOAD_S, clients=CLIENTS)

    async with anyio.create_task_group() as tg:
        tg.start_soon(load)
        with anyio.fail_after(30):
            while await lab.pgbench_clients() < CLIENTS:
                await anyio.sleep(0.1)
        argv = failover_argv(lab, ["--log-format", "json", "--yes", "--target", target, "--json"])
        result = await lab.run(argv, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"pgcm-failover failed: {result.stderr[-2000:]}")
    report = _dict(json.loads(result.stdout))
    with anyio.fail_after(60):
        await wait_pgcm_ready(lab, target)
    clients = box["load"]
    from pgcm_lab.load import LoadReport  # noqa: PLC0415  # only for the type check

    if not isinstance(clients, LoadReport):
        raise TypeError(clients)
    phases = {
        str(_dict(p)["name"]): round(_float(_dict(p)["seconds"]), 3)
        for p in _list(report["phases"])
    }
    return {
        "target": target,
        "share_s": await _share(lab, target, result.stderr.splitlines()),
        "failed_transactions": clients.failed_transactions,
        "aborted_clients": clients.aborted_clients,
        "transactions": clients.transactions,
        "max_latency_ms": clients.latency_max_ms,
        "paused_s": round(_float(report["paused_seconds"]), 3),
        "total_s": round(_float(report["total_seconds"]), 3),
        "phases_s": phases,
        "errors": list(clients.errors),
        "host_load_1m": round(os.getloadavg()[0], 2),
        **await promotion_latencies(lab, target),
    }


async def _share(lab: Lab, target: str, failover_log: list[str]) -> dict[str, object]:
    """This run's pgcm share, segment by segment (:mod:`pgcm_lab.share`), or why not."""
    marks = share.failover_marks(failover_log)
    if "pause_started" not in marks or "resumed" not in marks:
        return {"error": "the failover log has no pause or no resume"}
    chains = promotion_chains(_node_lines(lab, "var-log-pacemaker/pacemaker.log"))
    chain = share.chain_within(chains, marks["pause_started"], marks["resumed"])
    address = str(lab.topology.node(target).address)
    published = share.published_at(
        _node_lines(lab, "services/pgcm-supervise.log"), address, marks["pause_started"]
    )
    acked = share.last_ack(await etcd_get_prefix(lab, f"{NAMESPACE}/proxies/"), address)
    observed = share.record_observed(await etcd_get(lab, f"{NAMESPACE}{MASTER_KEY}.json"))
    if observed is not None:
        marks["observed"] = observed
    if published is not None:
        marks["published"] = published
    if acked is not None:
        marks["last_ack"] = acked
    try:
        return dict(share.segments(marks, chain))
    except share.ShareError as exc:
        return {"error": str(exc)}


def _node_lines(lab: Lab, relative: str) -> list[str]:
    """Every node's lines of the log at ``relative`` (under the node's directory)."""
    lines: list[str] = []
    for node in lab.topology.all_nodes:
        path = lab.node_dir(node.name) / relative
        if path.exists():
            lines += path.read_text(encoding="utf-8", errors="replace").splitlines()
    return lines


def _share_summary(runs: list[dict[str, object]]) -> dict[str, object]:
    """Median / p99 / min / max of every segment over the runs that could be broken down."""
    broken_down = [
        {k: _float(v) for k, v in _dict(r["share_s"]).items()}
        for r in runs
        if "error" not in _dict(r["share_s"])
    ]
    return {
        "share_runs": len(broken_down),
        "share_segments_s": share.summarize(broken_down),
    }


async def _restart_supervise(lab: Lab, extra: str) -> None:
    """Restart every supervise with its rendered file plus ``extra`` lines; wait for it.

    Killed by PID (SIGKILL: the lab's loop restarts a service that failed), then waited
    for until each logs ``supervise.ready`` once more.
    """
    script = venv_script("pgcm-supervise")
    ready_before: dict[str, int] = {}
    for node in lab.topology.nodes:
        path = config_path(lab, node.name)
        text = render_pgcm_toml(lab, node) + (f"\n{extra}\n" if extra else "")
        path.write_text(text, encoding="utf-8")
        log = lab.node_dir(node.name) / "services" / "pgcm-supervise.log"
        ready_before[node.name] = log.read_text(errors="replace").count('"supervise.ready"')
        for pid in _pids(script, str(path)):
            os.kill(pid, signal.SIGKILL)
    while True:
        counts = {
            name: (lab.node_dir(name) / "services" / "pgcm-supervise.log")
            .read_text(errors="replace")
            .count('"supervise.ready"')
            for name in ready_before
        }
        if all(counts[name] > ready_before[name] for name in ready_before):
            return
        await anyio.sleep(0.2)


def _pids(script: str, config: str) -> list[int]:
    """PIDs of the processes running ``script`` with ``config`` (not their sh loop)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if len(argv) > 1 and script in argv[:2] and config in argv and argv[0] != "sh":
            found.append(int(entry.name))
    return found


def _ab_summary(runs: list[dict[str, object]]) -> dict[str, object]:
    """Per variant: each segment's median and p99; per pair (A then B): B - A medians."""
    if not AB_SUPERVISE:
        return {}
    shares = [_dict(r["share_s"]) for r in runs]
    by_variant = {
        variant: share.summarize(
            [
                {k: _float(v) for k, v in s.items()}
                for r, s in zip(runs, shares, strict=True)
                if r["variant"] == variant and "error" not in s
            ]
        )
        for variant in ("A", "B")
    }
    differences: dict[str, list[float]] = {}
    for a, b in zip(shares[0::2], shares[1::2], strict=False):
        if "error" in a or "error" in b:
            continue
        for key in a.keys() & b.keys():
            differences.setdefault(key, []).append(_float(b[key]) - _float(a[key]))
    return {
        "ab_supervise_a": AB_SUPERVISE_A,
        "ab_supervise_b": AB_SUPERVISE,
        "ab_segments_s": by_variant,
        "ab_paired_difference_median_s": {
            key: round(statistics.median(values), 3) for key, values in sorted(differences.items())
        },
        "ab_pairs": min((len(v) for v in differences.values()), default=0),
    }


def _pacemaker_chain(lab: Lab, runs: list[dict[str, object]]) -> dict[str, object]:
    """Pacemaker/PAF's own move -> promoted time per step (pgcm_lab.chain), medians.

    Each run also gets its chain's ``pacemaker_chain_s`` and the rest of its paused time,
    ``paused_beyond_chain_s``: pgcm's own share (pause, the migrate call, publication,
    acknowledgements, resume) plus waiting for the new primary to be published.
    """
    lines: list[str] = []
    for node in lab.topology.nodes:
        log = lab.node_dir(node.name) / "var-log-pacemaker" / "pacemaker.log"
        lines += log.read_text(encoding="utf-8", errors="replace").splitlines()
    chains = [chain.seconds() for chain in promotion_chains(lines)][-len(runs) :]
    if len(chains) != len(runs):
        return {"pacemaker_chain_runs": len(chains)}  # a move left no complete chain
    for run, chain in zip(runs, chains, strict=True):
        run["pacemaker_chain_s"] = chain
        run["paused_beyond_chain_s"] = round(_float(run["paused_s"]) - chain["total"], 3)
    return {
        "pacemaker_chain_runs": len(chains),
        "pacemaker_chain_median_s": {
            step: round(statistics.median(chain[step] for chain in chains), 3)
            for step in (*STEPS, "total")
        },
        "paused_beyond_chain_median_s": _median(runs, "paused_beyond_chain_s"),
    }


def _median(runs: list[dict[str, object]], key: str) -> float | None:
    values = [_float(r[key]) for r in runs if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def _p99(runs: list[dict[str, object]], key: str) -> float | None:
    """Nearest-rank 99th percentile (with fewer than 100 runs: the maximum)."""
    values = sorted(_float(r[key]) for r in runs if r.get(key) is not None)
    if not values:
        return None
    return round(values[min(len(values) - 1, math.ceil(0.99 * len(values)) - 1)], 3)


async def _bench(lab: Lab) -> dict[str, object]:
    up_s = await lab.up()
    pgcm_t0 = time.monotonic()
    await start_pgcm(lab)
    pgcm_s = time.monotonic() - pgcm_t0
    primary = await lab.wait_healthy()
    await lab.exec(primary, ["pgbench", "-i", "-q", "-s", "1", "-h", "/run/postgresql",
                             "postgres"], user="postgres")  # fmt: skip
    names = [n.name for n in lab.topology.nodes]
    runs: list[dict[str, object]] = []
    for index in range(RUNS):
        variant = "B" if AB_SUPERVISE and index % 2 else "A"
        with anyio.fail_after(120):
            if AB_SUPERVISE:
                await _restart_supervise(lab, AB_SUPERVISE if variant == "B" else AB_SUPERVISE_A)
            current = await lab.wait_healthy()
            await wait_pgcm_ready(lab, current)
            target = names[(names.index(current) + 1) % len(names)]
            runs.append({"variant": variant, **await _one_run(lab, target)})
        sys.stderr.write(f"switchover run {len(runs)}: {json.dumps(runs[-1])}\n")
    chain = _pacemaker_chain(lab, runs)
    phase_names = list(_dict(runs[0]["phases_s"]))
    phases = {
        name: round(statistics.median(_float(_dict(r["phases_s"])[name]) for r in runs), 3)
        for name in phase_names
    }
    return {
        "runs": len(runs),
        "load": f"pgbench -c {CLIENTS} -T {LOAD_S} (TPC-B, scale 1) via app PgBouncer",
        "failed_transactions_total": sum(int(_float(r["failed_transactions"])) for r in runs),
        "aborted_clients_total": sum(int(_float(r["aborted_clients"])) for r in runs),
        "failed_transactions_median": _median(runs, "failed_transactions"),
        "aborted_clients_median": _median(runs, "aborted_clients"),
        "max_latency_median_ms": _median(runs, "max_latency_ms"),
        "paused_median_s": _median(runs, "paused_s"),
        "switchover_total_median_s": _median(runs, "total_s"),
        "promotion_to_etcd_median_ms": _median(runs, "promotion_to_etcd_ms"),
        "promotion_to_etcd_p99_ms": _p99(runs, "promotion_to_etcd_ms"),
        "promotion_to_last_ack_median_ms": _median(runs, "promotion_to_last_ack_ms"),
        "promotion_to_last_ack_p99_ms": _p99(runs, "promotion_to_last_ack_ms"),
        "paused_p99_s": _p99(runs, "paused_s"),
        "phase_median_s": phases,
        **chain,
        **_share_summary(runs),
        **_ab_summary(runs),
        "lab_up_s": round(up_s, 2),
        "pgcm_start_s": round(pgcm_s, 2),
        "per_run": runs,
    }


def run() -> dict[str, object]:
    """Bring the lab up with pgcm, switch over ``RUNS`` times under load, tear it down."""
    probe = Lab(STATE_DIR, progress=Progress(None))
    if lab_leftovers(probe):
        raise RuntimeError(f"a lab is already running: {lab_leftovers(probe)}")
    lab = Lab(STATE_DIR, progress=Progress(sys.stderr))
    results: dict[str, object] = {}
    try:
        results = anyio.run(_bench, lab)
    finally:
        down_s = anyio.run(lab.down)
    results["lab_down_s"] = round(down_s, 2)
    results["targets"] = {
        "failed_transactions_total": "0",
        "aborted_clients_total": "0",
        "paused_median_s": "<= 2.0 (goal; Pacemaker/PAF floor on this host ~1.6 idle)",
        "promotion_to_etcd_p99_ms": "<= 200",
        "promotion_to_last_ack_p99_ms": "<= 200",
        "share_segments_s.share.median": "<= 0.15 (pgcm's share of the paused time)",
    }
    return results
