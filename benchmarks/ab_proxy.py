"""Compare two builds of pgcm-proxy side by side: a paired A/B of put -> file and routing.

Usage::

    uv run python benchmarks/ab_proxy.py BASELINE_REV [--changes N] [--runs R]

Builds pgcm-proxy from ``BASELINE_REV`` (A, in a temporary git worktree) and from the
working tree (B), each installed alone from its wheels, and runs both at once against
one etcd, each with its own PgBouncer and key. Changes alternate between the two (A
then B, then B then A, ...), so that both see the same machine: on the shared VM the
benchmarks run on, the put round trip alone drifts by a millisecond between runs a
minute apart, more than most changes to the proxy are worth.

Prints, per run, both builds' p50 / p90 / p99 of put -> pgbouncer.ini rewritten, their
p50 / p99 of put -> PgBouncer routes to the new host, and the median of the per-pair
differences of the first (B - A; negative: B is faster). Running a build against itself shows the
harness's own bias (0.02-0.04 ms on that VM). Not a ``bench_*`` module: ``run.py``
does not pick it up, and nothing is written to the results files.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import anyio
from bench_proxy import (
    HOSTS,
    LeanWriter,
    ProxyUnderTest,
    RunningProxy,
    percentile,
    start_backends,
    start_proxy,
)
from deployed import ROOT, build_wheels, install_alone

from pgcm_common.etcd import open_etcd
from pgcm_testkit.etcd import EtcdCluster
from pgcm_testkit.process import make_world_traversable


def _install(tree: Path, work: Path) -> Path:
    """Build ``tree``'s wheels and install pgcm-proxy alone in a venv; return its script."""
    build_wheels(tree, work / "dist")
    script = install_alone("pgcm-proxy", work / "dist", work / "venv")
    work.chmod(0o755)
    return script


async def _alternate(
    proxies: dict[str, RunningProxy], cluster: EtcdCluster, changes: int
) -> dict[str, list[tuple[float, ...]]]:
    writer = LeanWriter(cluster.endpoints[0])
    measured: dict[str, list[tuple[float, ...]]] = {name: [] for name in proxies}
    try:
        async with open_etcd(cluster.settings()) as store:
            drivers = {
                name: ProxyUnderTest(proxy.ini_path, proxy.console, store, f"/ab-{name}")
                for name, proxy in proxies.items()
            }
            for driver in drivers.values():
                await driver.first_apply(writer)
            order = list(drivers)
            for i in range(changes):
                host = HOSTS[(i + 1) % 2]
                for name in order if i % 2 == 0 else reversed(order):
                    measured[name].append(await drivers[name].change(writer, host, i))
            for name, driver in drivers.items():
                driver.close()
                await proxies[name].console.aclose()
    finally:
        writer.close()
    return measured


def _report(run: int, measured: dict[str, list[tuple[float, ...]]]) -> str:
    lines = [f"run {run}:"]
    for name, rows in measured.items():
        files, routes = [r[1] for r in rows], [r[2] for r in rows]
        lines.append(
            f"  {name}: put -> file p50 {statistics.median(files):.2f} / p90 "
            f"{percentile(files, 0.9):.2f} / p99 {percentile(files, 0.99):.2f} ms; put -> routed"
            f" p50 {statistics.median(routes):.2f} / p99 {percentile(routes, 0.99):.2f} ms"
        )
    differences = [b[1] - a[1] for a, b in zip(measured["A"], measured["B"], strict=True)]
    lines.append(f"  B - A, median of paired put -> file: {statistics.median(differences):+.3f} ms")
    return "\n".join(lines)


def compare(baseline: str, changes: int, runs: int) -> None:
    """Build both, then measure ``runs`` times with ``changes`` changes per build."""
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pgcm-ab-proxy-")))
        make_world_traversable(work)
        tree = work / "baseline-tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "--quiet", str(tree), baseline],
            cwd=ROOT, check=True,
        )  # fmt: skip
        stack.callback(
            subprocess.run,
            ["git", "worktree", "remove", "--force", str(tree)],
            cwd=ROOT,
            check=False,
        )
        binaries = {"A": _install(tree, work / "a"), "B": _install(ROOT, work / "b")}
        for run in range(1, runs + 1):
            with ExitStack() as servers:
                base = work / f"run-{run}"
                base.mkdir()
                cluster, port = start_backends(servers, base)
                proxies = {
                    name: start_proxy(
                        servers, base / name, cluster, port, binary=binary, namespace=f"/ab-{name}"
                    )
                    for name, binary in binaries.items()
                }
                print(_report(run, anyio.run(_alternate, proxies, cluster, changes)), flush=True)


def main(argv: list[str]) -> int:
    """Parse the command line and compare."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("baseline", help="git revision to build A from (B is the working tree)")
    parser.add_argument("--changes", type=int, default=600, help="changes per build and run")
    parser.add_argument("--runs", type=int, default=3, help="runs, each with fresh servers")
    args = parser.parse_args(argv)
    compare(args.baseline, args.changes, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
