"""P4: RSS and idle CPU of the pgcm daemons (supervise, proxy) over 60 s.

Starts etcd (on tmpfs), PostgreSQL, PgBouncer and the test kit's one-node Pacemaker
cluster (``start_pacemaker_node``: needs root), then ``pgcm-supervise run`` (reading
crm_mon inside the node through ``command_prefix``, default 500 ms poll interval,
publishing to etcd) and ``pgcm-proxy run`` (following the key supervise publishes, with
a real pgbouncer.ini template). After a warm-up, each daemon's RSS and CPU time are read
from /proc over ``IDLE_S`` seconds of a stable cluster. Supervise's figure with children
includes the crm_mon/nsenter processes it runs every poll. pgcm-failover is an operator
CLI, not a daemon: it has no idle cost.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import tomli_w
from deployed import deployed_script, terminate, unit_environment

from pgcm_testkit.etcd import start_etcd
from pgcm_testkit.pacemaker import start_pacemaker_node
from pgcm_testkit.pgbouncer import ADMIN_PASSWORD, backend_connstr, start_pgbouncer
from pgcm_testkit.postgres import start_postgres
from pgcm_testkit.process import POSTGRES_USER, free_tcp_port, make_world_traversable

DESCRIPTION = (
    "P4: RSS and idle CPU of pgcm-supervise (crm_mon every 500 ms, one-node Pacemaker) "
    "and pgcm-proxy (etcd watch, PgBouncer) over 60 s of a stable cluster."
)
IDLE_S = 60.0
WARMUP_S = 10.0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


def _cpu(pid: int) -> tuple[float, float]:
    """Return (own CPU seconds, CPU seconds of waited-for children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def _spawn(stack: ExitStack, service: str, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``service`` as deployed (own venv, its unit's environment); stopped on exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGCM_", "NOTIFY_"))}
    env |= unit_environment(service)
    argv = [str(deployed_script(service)), *args]
    out = stack.enter_context(log.open("wb"))
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)

    stack.callback(terminate, process, timeout_s=20)
    return process


def run() -> dict[str, object]:
    """Start the cluster and both daemons, measure, stop everything; return the numbers."""
    with ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pgcm-bench-p4-")))
        make_world_traversable(base)
        shm = Path(stack.enter_context(tempfile.TemporaryDirectory(dir="/dev/shm")))
        etcd = stack.enter_context(start_etcd(shm / "etcd"))
        postgres = stack.enter_context(start_postgres(base / "pg", port=free_tcp_port()))
        (base / "pgb").mkdir()
        bouncer = stack.enter_context(
            start_pgbouncer(base / "pgb", databases={"app": backend_connstr(postgres)})
        )
        node = stack.enter_context(start_pacemaker_node(base / "pcmk"))
        template = base / "pgbouncer.ini.template"
        template.write_text(
            bouncer.ini_path.read_text().replace(f"host={postgres.host} ", "host={{.Host}} ")
        )
        shared = {
            "cluster": {"namespace": "/bench-p4"},
            "etcd": {"endpoints": etcd.endpoints},
            "pgbouncer": {
                "host": "127.0.0.1",
                "port": bouncer.port,
                "user": POSTGRES_USER,
                "password": ADMIN_PASSWORD,
            },
        }
        config = base / "pgcm.toml"
        config.write_text(
            tomli_w.dumps(
                {
                    **shared,
                    "proxy": {
                        "pgbouncer_config_file": str(bouncer.ini_path),
                        "pgbouncer_config_template_file": str(template),
                        "proxy_id": "bench-p4",
                    },
                    "supervise": {
                        "bind_address": f"127.0.0.1:{free_tcp_port()}",
                        "command_prefix": list(node.command_prefix),
                        "resource_id": node.resource_id,
                        "node_name": node.name,
                        "nudge_socket": str(base / "supervise.sock"),
                    },
                }
            )
        )
        common = ["--log-format", "json", "run", "--config-file", str(config)]
        supervise = _spawn(stack, "pgcm-supervise", common, base / "supervise.log")
        proxy = _spawn(stack, "pgcm-proxy", common, base / "proxy.log")
        time.sleep(WARMUP_S)  # a benchmark, not a test: a fixed warm-up is the point
        for name, process in (("supervise", supervise), ("proxy", proxy)):
            if process.poll() is not None:
                log = (base / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"pgcm-{name} exited {process.returncode}:\n{log}")
        before = {p.pid: _cpu(p.pid) for p in (supervise, proxy)}
        started = time.monotonic()
        time.sleep(IDLE_S)
        elapsed = time.monotonic() - started
        after = {p.pid: _cpu(p.pid) for p in (supervise, proxy)}
        results: dict[str, object] = {"idle_s": IDLE_S}
        for name, process in (("supervise", supervise), ("proxy", proxy)):
            own = (after[process.pid][0] - before[process.pid][0]) / elapsed * 100
            children = (after[process.pid][1] - before[process.pid][1]) / elapsed * 100
            results[f"{name}_rss_mb"] = _rss_mb(process.pid)
            results[f"{name}_idle_cpu_percent"] = round(own, 2)
            results[f"{name}_idle_cpu_with_children_percent"] = round(own + children, 2)
        published = "etcd.master.publish" in (base / "supervise.log").read_text(errors="replace")
        results["supervise_published_primary"] = published
        return results
