"""P4: RSS and idle CPU of the pgcm daemons (supervise, proxy) over 60 s, as installed.

Each daemon runs from its Debian package as the package installs it and the packaged
systemd unit starts it (:func:`deployed.installed_command`): the .deb built by
``packaging/build_debs.py`` and unpacked, bytecode compiled by the postinst's command,
Debian's ``/usr/bin/python3`` running the venv's console script with the unit's
``ExecStart`` arguments and ``Environment=``. ``PYTHONDONTWRITEBYTECODE=1`` stands in
for the unit's read-only file system (``ProtectSystem=strict``): no bytecode is written
beside Debian's standard library, here as there. Memory is read from
``/proc/PID/smaps_rollup`` as well as ``status``: RSS counts shared library pages in
full, PSS divides them among the processes mapping them, USS (private pages) is what
stopping the daemon would give back.

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
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

import tomli_w
from deployed import installed_command, terminate, unit_environment

from pgcm_testkit.etcd import start_etcd
from pgcm_testkit.pacemaker import start_pacemaker_node
from pgcm_testkit.pgbouncer import ADMIN_PASSWORD, backend_connstr, start_pgbouncer
from pgcm_testkit.postgres import start_postgres
from pgcm_testkit.process import POSTGRES_USER, free_tcp_port, make_world_traversable

DESCRIPTION = (
    "P4: memory (RSS, PSS, USS) and idle CPU of pgcm-supervise (crm_mon every 500 ms, "
    "one-node Pacemaker) and pgcm-proxy (etcd watch, PgBouncer) over 60 s of a stable "
    "cluster, each run from its Debian package with its unit's command line and environment."
)
TARGETS = {
    "proxy_rss_mb": "<= 45 (Go original: 18)",
    "supervise_rss_mb": "<= 50",
}
IDLE_S = 60.0
WARMUP_S = 10.0


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


def _smaps_mb(pid: int) -> dict[str, float]:
    """Return PSS and USS (private clean + dirty) of ``pid`` in MB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value)
    uss = fields["Private_Clean"] + fields["Private_Dirty"]
    return {"pss_mb": round(fields["Pss"] / 1024, 1), "uss_mb": round(uss / 1024, 1)}


def _threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def _cpu(pid: int) -> tuple[float, float]:
    """Return (own CPU seconds, CPU seconds of waited-for children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def _spawn(
    stack: ExitStack, service: str, args: list[str], log: Path, overrides: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """Start ``service`` as installed (its package, its unit's environment); stopped on exit."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PGCM_", "NOTIFY_", "PYTHON", "MALLOC_"))
    }
    env |= unit_environment(service) | {"PYTHONDONTWRITEBYTECODE": "1"}
    for name, value in overrides.items():
        if value:
            env[name] = value
        else:
            env.pop(name, None)
    argv = [*installed_command(service), *args]
    out = stack.enter_context(log.open("wb"))
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)

    stack.callback(terminate, process, timeout_s=20)
    return process


def run() -> dict[str, object]:
    """Start the cluster and both daemons, measure, stop everything; return the numbers."""
    return measure() | {"targets": TARGETS}


def measure(
    overrides: Mapping[str, str] | None = None, idle_s: float = IDLE_S
) -> dict[str, object]:
    """Measure both daemons; ``overrides`` changes their environment ("" removes a name).

    A tool for before/after comparisons (``MALLOC_ARENA_MAX``, ``PYTHONOPTIMIZE``): the
    benchmark itself runs with the units' environment unchanged.
    """
    overrides = dict(overrides or {})
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
        supervise = _spawn(stack, "pgcm-supervise", common, base / "supervise.log", overrides)
        proxy = _spawn(stack, "pgcm-proxy", common, base / "proxy.log", overrides)
        time.sleep(WARMUP_S)  # a benchmark, not a test: a fixed warm-up is the point
        for name, process in (("supervise", supervise), ("proxy", proxy)):
            if process.poll() is not None:
                log = (base / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"pgcm-{name} exited {process.returncode}:\n{log}")
        before = {p.pid: _cpu(p.pid) for p in (supervise, proxy)}
        started = time.monotonic()
        time.sleep(idle_s)
        elapsed = time.monotonic() - started
        after = {p.pid: _cpu(p.pid) for p in (supervise, proxy)}
        results: dict[str, object] = {"idle_s": idle_s}
        for name, process in (("supervise", supervise), ("proxy", proxy)):
            own = (after[process.pid][0] - before[process.pid][0]) / elapsed * 100
            children = (after[process.pid][1] - before[process.pid][1]) / elapsed * 100
            results[f"{name}_rss_mb"] = _rss_mb(process.pid)
            for metric, value in _smaps_mb(process.pid).items():
                results[f"{name}_{metric}"] = value
            results[f"{name}_threads"] = _threads(process.pid)
            results[f"{name}_idle_cpu_percent"] = round(own, 2)
            results[f"{name}_idle_cpu_with_children_percent"] = round(own + children, 2)
        published = "etcd.master.publish" in (base / "supervise.log").read_text(errors="replace")
        results["supervise_published_primary"] = published
        return results


if __name__ == "__main__":
    # Before/after comparisons: ``bench_daemons.py MALLOC_ARENA_MAX=2 PYTHONOPTIMIZE=``
    # prints the numbers with those changes to the units' environment.
    import json
    import sys

    changes = dict(arg.partition("=")[::2] for arg in sys.argv[1:])
    print(json.dumps(measure(changes), indent=2))
