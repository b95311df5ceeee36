"""Run pgcm itself in the lab: supervise and proxy on every node, failover from the app node.

``pgcm-lab up --with-pgcm`` (or :func:`start_pgcm` after :meth:`Lab.up`) writes one TOML
file per node (``<state-dir>/nodes/<node>/pgcm.toml``, every service's table in one file),
a PgBouncer template rendered from the lab's own pgbouncer.ini with the original's
``{{.Host}}`` placeholder, registers the Pacemaker alert agent so a promotion nudges
supervise at once, and starts through the lab's :class:`~pgcm_lab.lab.Service` hook:

* ``pgcm-supervise`` on every Postgres node, gRPC on ``<node-ip>:8080`` with a bearer
  token and ``insecure = true``: outside the lab a token needs TLS, but the lab's
  network lives in namespaces of this one machine (the end-to-end suite starts a TLS
  supervise of its own); addresses from a static map;
* ``pgcm-proxy`` on every Postgres node and the app node; it owns that node's
  ``/etc/pgbouncer/pgbouncer.ini`` from then on.

``pgcm-failover`` runs in the app node's network namespace (the host's own namespace has
no route into the lab): :func:`failover_argv` builds that command line, and
``pgcm-lab pgcm-failover -- ARGS`` runs it. The console scripts are taken from the
environment this module runs in (``sys.prefix``), so no checkout path is written down.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Final

import anyio

from pgcm_lab import pgcmconf, provision
from pgcm_lab.errors import LabError
from pgcm_lab.lab import Lab, Service
from pgcm_lab.pgcmconf import (
    MASTER_KEY,
    NAMESPACE,
    NUDGE_SOCKET,
    SUPERVISE_PORT,
    TEMPLATE_PATH,
    TOKEN,
    render_pgbouncer_template,
)
from pgcm_lab.topology import APP_NODE, Node

__all__ = [
    "MASTER_KEY",
    "NAMESPACE",
    "NUDGE_SOCKET",
    "SUPERVISE_PORT",
    "TEMPLATE_PATH",
    "TOKEN",
    "config_path",
    "etcd_get",
    "etcd_get_prefix",
    "failover_argv",
    "pgcm_services",
    "register_alert_agent",
    "render_pgbouncer_template",
    "render_pgcm_toml",
    "start_pgcm",
    "venv_script",
    "wait_pgcm_ready",
]

_POLL: Final = 0.1
_WAIT_REPORT_S: Final = 10.0


def venv_script(name: str) -> str:
    """Return the path of console script ``name`` in the environment running this code.

    Raises:
        LabError: the script is not installed there (``uv sync --all-packages``).
    """
    path = Path(sys.prefix) / "bin" / name
    if not path.exists():
        raise LabError(f"{path} not found: install the workspace (uv sync --all-packages)")
    return str(path)


def _repo_root() -> Path:
    # libs/pgcm-lab/src/pgcm_lab/pgcm.py -> the workspace root
    return Path(__file__).resolve().parents[4]


def config_path(lab: Lab, node: str) -> Path:
    """Where node ``node``'s pgcm TOML lives (the same path on the host and in the node)."""
    return lab.node_dir(node) / "pgcm.toml"


def render_pgcm_toml(lab: Lab, node: Node) -> str:
    """Return the one TOML file configuring every pgcm service on ``node`` of ``lab``."""
    return pgcmconf.render_pgcm_toml(lab.topology, node)


def _write_files(lab: Lab) -> None:
    for node in lab.topology.all_nodes:
        path = config_path(lab, node.name)
        path.write_text(render_pgcm_toml(lab, node), encoding="utf-8")
        path.chmod(0o600)  # holds the token
        template = lab.host_path(node.name, TEMPLATE_PATH)
        template.write_text(render_pgbouncer_template(node), encoding="utf-8")
        template.chmod(0o644)
    agent = _repo_root() / "deploy" / "pacemaker" / "pgcm-alert-agent"
    if not agent.exists():
        raise LabError(f"alert agent {agent} not found")
    # A copy in the state dir: Pacemaker runs agents as hacluster, who must reach it.
    target = lab.state_dir / "pgcm-alert-agent"
    shutil.copyfile(agent, target)
    target.chmod(0o755)


def pgcm_services(lab: Lab) -> list[Service]:
    """The lab services running pgcm, per node role (:data:`pgcm_lab.provision.DAEMONS`).

    A service every role runs is started on ``all`` nodes, one only Postgres nodes run
    on ``db``.
    """
    config = str(lab.state_dir / "nodes" / "{node}" / "pgcm.toml")
    db = provision.daemons(lab.topology.nodes[0])
    app = provision.daemons(lab.topology.app)
    return [
        Service(
            name=name,
            node="all" if name in app else "db",
            argv=(venv_script(name), "run", "--config-file", config),
            restart=True,
        )
        for name in dict.fromkeys((*db, *app))
    ]


async def register_alert_agent(lab: Lab) -> None:
    """Add the pgcm alert agent to the CIB (recipient: supervise's nudge socket)."""
    agent = lab.state_dir / "pgcm-alert-agent"
    xml = provision.alerts_xml(str(agent), NUDGE_SOCKET, lab.topology.resource)
    first = lab.topology.nodes[0].name
    replace, create = provision.register_alerts_argvs(xml)
    if (await lab.exec(first, replace, check=False)).returncode != 0:
        await lab.exec(first, create)


async def etcd_get(lab: Lab, key: str, *, node: str | None = None) -> str | None:
    """Return the value of ``key`` read with etcdctl inside a live Postgres node."""
    names = [node] if node else [n.name for n in lab.topology.nodes if lab.init_pid(n.name)]
    for name in names:
        argv = ["etcdctl", "--endpoints=http://127.0.0.1:2379", "--command-timeout=2s",
                "get", key, "-w", "json"]  # fmt: skip
        result = await lab.exec(name, argv, check=False, env={"ETCDCTL_API": "3"})
        if result.returncode == 0:
            values = _values(result.stdout)
            return values.get(key)
    raise LabError("no etcd member answered")


async def etcd_get_prefix(lab: Lab, prefix: str) -> dict[str, str]:
    """Return every key under ``prefix`` with its value (etcdctl in a live node)."""
    for node in lab.topology.nodes:
        if lab.init_pid(node.name) is None:
            continue
        argv = ["etcdctl", "--endpoints=http://127.0.0.1:2379", "--command-timeout=2s",
                "get", "--prefix", prefix, "-w", "json"]  # fmt: skip
        result = await lab.exec(node.name, argv, check=False, env={"ETCDCTL_API": "3"})
        if result.returncode == 0:
            return _values(result.stdout)
    raise LabError("no etcd member answered")


def _values(raw: str) -> dict[str, str]:
    import base64  # noqa: PLC0415  # only etcdctl's JSON needs it

    data = json.loads(raw)
    out: dict[str, str] = {}
    for kv in data.get("kvs", []) or []:
        key = base64.b64decode(kv["key"]).decode()
        out[key] = base64.b64decode(kv.get("value", "")).decode()
    return out


async def pgcm_view(lab: Lab) -> tuple[str | None, dict[str, str]]:
    """The etcd primary and every proxy's acknowledged host (``proxy id -> host``)."""
    master = await etcd_get(lab, f"{NAMESPACE}{MASTER_KEY}")
    acks = await etcd_get_prefix(lab, f"{NAMESPACE}/proxies/")
    hosts = {}
    for key, value in acks.items():
        try:
            hosts[key.rsplit("/", 1)[1]] = str(json.loads(value).get("host"))
        except (ValueError, AttributeError):
            hosts[key.rsplit("/", 1)[1]] = "?"
    return master, hosts


async def wait_pgcm_ready(lab: Lab, primary: str, *, unreachable: Collection[str] = ()) -> None:
    """Wait (caller bounds it) until etcd names ``primary`` and every proxy acknowledged it.

    Proxies of nodes in ``unreachable`` (cut off by a partition) are not waited for.
    """
    address = str(lab.topology.node(primary).address)
    proxies = {
        n.name for n in lab.topology.all_nodes if lab.init_pid(n.name) and n.name not in unreachable
    }
    reported = anyio.current_time()
    while True:
        try:
            master, hosts = await pgcm_view(lab)
        except LabError as exc:
            master, hosts = f"unreadable ({exc})", {}
        if master == address and all(hosts.get(p) == address for p in proxies):
            return
        if anyio.current_time() - reported > _WAIT_REPORT_S:
            # What is still missing, for whoever reads a timed-out test's output.
            reported = anyio.current_time()
            lab.progress(f"waiting for pgcm to name {address}: etcd has {master}, acks {hosts}")
        await anyio.sleep(_POLL * 3)


async def start_pgcm(lab: Lab) -> None:
    """Write pgcm's files, register the alert agent, start supervise and proxies, wait.

    Call after :meth:`Lab.up`. Returns once etcd names the primary and every proxy
    (Postgres nodes and app node) has acknowledged it.

    Raises:
        LabError: a script or the alert agent is missing, or the lab has no primary.
        TimeoutError: pgcm did not converge within 60 s.
    """
    services = pgcm_services(lab)
    await anyio.to_thread.run_sync(_write_files, lab)
    await register_alert_agent(lab)
    for service in services:
        await lab.start_service(service)
    primary = await lab.primary()
    if primary is None:
        raise LabError("no primary to publish")
    with anyio.fail_after(60):
        await wait_pgcm_ready(lab, primary)
    lab.progress(f"pgcm running: etcd {NAMESPACE}{MASTER_KEY} = {primary}, every proxy acked")


def failover_argv(lab: Lab, args: Sequence[str]) -> list[str]:
    """The command line running ``pgcm-failover ARGS`` in the app node's network namespace.

    Only the network namespace is entered, so ``nsenter`` execs pgcm-failover itself:
    the PID of the process started with this argv is pgcm-failover's (tests SIGKILL it).

    Raises:
        LabError: the app node is not running.
    """
    pid = lab.init_pid(APP_NODE)
    if pid is None:
        raise LabError("the app node is not running")
    return [
        "nsenter", "-t", str(pid), "-n", "--",
        venv_script("pgcm-failover"), "--config-file", str(config_path(lab, APP_NODE)), *args,
    ]  # fmt: skip
