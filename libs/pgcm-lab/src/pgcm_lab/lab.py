# ruff: noqa: ASYNC110  # we poll other processes' state: there is no event to await
"""The lab driver: bring a real N-node cluster up in namespaces, break it, mend it, end it.

Every node is a network namespace ``pgcmlab-nK`` (plus ``pgcmlab-app``) joined to a bridge
in its own namespace ``pgcmlab-br``, and a mount/UTS/PID namespace whose PID 1 is
:mod:`pgcm_lab.init`. Nothing is added to the host's network, Pacemaker, Corosync or
PostgreSQL state. ``down`` kills each node's init by PID (which ends every process in the
node), deletes the namespaces, and removes ``/run/netns`` and ``/run/mount`` only when
the lab created them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from signal import SIGCONT, SIGSTOP
from typing import IO, Final, final

import anyio

from pgcm_lab import provision
from pgcm_lab.crm import ClusterView, parse_crm_mon
from pgcm_lab.errors import CommandFailed, LabAlreadyUp, LabError, LabNotUp
from pgcm_lab.load import LoadReport, max_latency_ms, parse_pgbench
from pgcm_lab.probe import NO_ANSWER, bounded
from pgcm_lab.render import (
    RenderedFile,
    etcd_argv,
    node_files,
    render_pg_hba,
    render_postgresql_conf,
)
from pgcm_lab.topology import APP_NODE, CLONE, PG_BINDIR, PGDATA, Node, Topology

__all__ = [
    "DEFAULT_STATE_DIR",
    "Lab",
    "Progress",
    "Service",
    "lab_leftovers",
    "node_pids",
    "status_role",
]

DEFAULT_STATE_DIR: Final = Path("/var/tmp/pgcm-lab")  # noqa: S108  # survives reboots of /tmp
PREFIX: Final = "pgcmlab"
BRIDGE_NS: Final = f"{PREFIX}-br"
_POLL: Final = 0.2
_REJOIN_S: Final = 75.0  # after a rebuild: back to healthy, one more cleanup included
_REJOIN_CLEANUP_S: Final = 45.0
_FENCE_BIN: Final = "fence-bin"
_SYSTEM_PYTHON: Final = "/usr/bin/python3"

# (directory below the node's state dir, mount point inside the node)
_DB_MOUNTS: Final = (
    ("run", "/run"),
    ("etc-corosync", "/etc/corosync"),
    ("var-lib-corosync", "/var/lib/corosync"),
    ("var-log-corosync", "/var/log/corosync"),
    ("var-lib-pacemaker", "/var/lib/pacemaker"),
    ("var-log-pacemaker", "/var/log/pacemaker"),
    ("var-lib-postgresql", "/var/lib/postgresql"),
    ("var-log-postgresql", "/var/log/postgresql"),
    ("var-lib-etcd", "/var/lib/etcd"),
    ("etc-pgbouncer", "/etc/pgbouncer"),
    ("hosts", "/etc/hosts"),
)
_APP_MOUNTS: Final = (
    ("run", "/run"),
    ("var-log-postgresql", "/var/log/postgresql"),
    ("etc-pgbouncer", "/etc/pgbouncer"),
    ("hosts", "/etc/hosts"),
)
_OWNED_DIRS: Final = (
    ("var-lib-pacemaker", "hacluster", 0o750),
    ("var-lib-pacemaker/cib", "hacluster", 0o750),
    ("var-lib-pacemaker/pengine", "hacluster", 0o750),
    ("var-lib-pacemaker/blackbox", "hacluster", 0o750),
    ("var-lib-pacemaker/cores", "hacluster", 0o750),
    ("var-log-pacemaker", "hacluster", 0o770),
    ("var-log-pacemaker/bundles", "hacluster", 0o770),
    ("var-lib-postgresql", "postgres", 0o755),
    ("var-lib-postgresql/15", "postgres", 0o755),
    ("var-log-postgresql", "postgres", 0o775),
    ("etc-pgbouncer", "postgres", 0o755),
    ("var-lib-etcd", "root", 0o700),
)


# Exit 0 is a clean stop and 2 a configuration error: neither is retried.
_RESTART_ON_FAILURE = (
    'while :; do "$@"; rc=$?; case $rc in 0|2) exit $rc;; esac; '
    'echo "lab: $0 exited $rc; restarting in 1 s" >&2; sleep 1; done'
)


@final
@dataclass(frozen=True, slots=True)
class Service:
    """A process to run inside lab nodes after ``up`` (the hook for pgcm's services).

    ``node`` is a node name, ``db`` (every Postgres node) or ``all``. ``{node}`` and
    ``{address}`` in ``argv`` are replaced per node. Output goes to
    ``<state-dir>/nodes/<node>/services/<name>.log``. ``restart`` restarts the process
    one second after it exits with a failure, as the deploy units' systemd
    ``Restart=on-failure`` (with ``RestartPreventExitStatus=2``) does.
    """

    name: str
    node: str
    argv: tuple[str, ...]
    user: str = "root"
    env: Mapping[str, str] = field(default_factory=dict)
    restart: bool = False

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict (saved in the state dir so ``start-node`` restarts it)."""
        return {
            "name": self.name,
            "node": self.node,
            "argv": list(self.argv),
            "user": self.user,
            "env": dict(self.env),
            "restart": self.restart,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Service:
        """Parse one ``[[service]]`` table or saved entry."""
        argv = data.get("argv")
        env = data.get("env", {})
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise LabError(f"service {data.get('name')!r}: argv must be a list of strings")
        if not isinstance(env, dict):
            raise LabError(f"service {data.get('name')!r}: env must be a table")
        return cls(
            name=str(data["name"]),
            node=str(data.get("node", "db")),
            argv=tuple(argv),
            user=str(data.get("user", "root")),
            env={str(k): str(v) for k, v in env.items()},
            restart=bool(data.get("restart", False)),
        )


@final
class Progress:
    """One line per stage with the elapsed time, on stderr (or nowhere)."""

    def __init__(self, stream: IO[str] | None = sys.stderr) -> None:
        self._stream = stream
        self._t0 = time.monotonic()

    def restart(self) -> None:
        """Measure from now."""
        self._t0 = time.monotonic()

    @property
    def elapsed(self) -> float:
        """Seconds since the last restart."""
        return time.monotonic() - self._t0

    def __call__(self, message: str) -> None:
        """Print ``message`` with the elapsed time."""
        if self._stream is not None:
            self._stream.write(f"[{self.elapsed:6.2f}s] {message}\n")
            self._stream.flush()


@final
@dataclass(frozen=True, slots=True)
class SwitchoverResult:
    """Timings of a switchover (seconds from the move)."""

    source: str | None
    target: str
    writable_after: float
    settled_after: float
    total: float


@final
class Lab:
    """Drive one lab whose state lives in ``state_dir``.

    Cancellation: every method bounds its waits with ``anyio.fail_after``; a cancelled
    ``up`` leaves a half-built lab that ``down`` (or the next ``up``) removes.
    """

    def __init__(
        self,
        state_dir: Path = DEFAULT_STATE_DIR,
        topology: Topology | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.progress = progress or Progress()
        saved = self._read_state()
        size = saved.get("size", 3)
        self.topology = topology or Topology(size=size if isinstance(size, int) else 3)
        services = saved.get("services", [])
        self.services = [
            Service.from_dict(s) for s in (services if isinstance(services, list) else [])
        ]
        # unshare processes started by this object: kept so they are waited for, not leaked.
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------------ state files
    @property
    def _state_file(self) -> Path:
        return self.state_dir / "lab.json"

    def _read_state(self) -> dict[str, object]:
        try:
            data = json.loads(self._state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def _write_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = {"size": self.topology.size, "services": [s.as_dict() for s in self.services]}
        self._state_file.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

    def node_dir(self, name: str) -> Path:
        """The host directory holding node ``name``'s private files."""
        return self.state_dir / "nodes" / name

    def _mounts(self, node: Node) -> tuple[tuple[str, str], ...]:
        return _APP_MOUNTS if node.is_app else _DB_MOUNTS

    def host_path(self, name: str, inner: str) -> Path:
        """Where ``inner`` (a path inside node ``name``) lives on the host."""
        node = self.topology.node(name)
        best: tuple[str, str] | None = None
        for source, target in self._mounts(node):
            if (inner == target or inner.startswith(target.rstrip("/") + "/")) and (
                best is None or len(target) > len(best[1])
            ):
                best = (source, target)
        if best is None:
            raise LabError(f"{inner} is not private to node {name}")
        rest = inner[len(best[1]) :].lstrip("/")
        base = self.node_dir(name) / best[0]
        return base / rest if rest else base

    def _pid_file(self, name: str, kind: str = "init") -> Path:
        return self.state_dir / "pids" / f"{name}.{kind}"

    def init_pid(self, name: str) -> int | None:
        """The host PID of node ``name``'s init, if it is alive."""
        try:
            pid = int(self._pid_file(name).read_text(encoding="utf-8").strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) and _cmdline_has(pid, "pgcm_lab.init") else None

    def running_nodes(self) -> list[str]:
        """Names of the nodes whose init is alive."""
        return [n.name for n in self.topology.all_nodes if self.init_pid(n.name) is not None]

    # ------------------------------------------------------------------ commands
    async def run(
        self, argv: Sequence[str], *, check: bool = True, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on the host and return its output (text).

        Raises:
            CommandFailed: ``check`` and the command exited non-zero.
        """
        full_env = {**os.environ, **env} if env else None
        result = await anyio.run_process(list(argv), check=False, env=full_env)
        out = result.stdout.decode(errors="replace")
        err = result.stderr.decode(errors="replace")
        if check and result.returncode != 0:
            raise CommandFailed(argv, result.returncode, out + err)
        return subprocess.CompletedProcess(argv, result.returncode, out, err)

    def _enter(self, name: str, *, net_only: bool = False) -> list[str]:
        pid = self.init_pid(name)
        if pid is None:
            raise LabNotUp(f"node {name}")
        flags = ["-n"] if net_only else ["-n", "-m", "-u", "-p"]
        return ["nsenter", "-t", str(pid), *flags, "--"]

    async def exec(
        self,
        name: str,
        argv: Sequence[str],
        *,
        user: str | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside node ``name`` (all its namespaces), optionally as ``user``.

        Raises:
            LabNotUp: the node is not running.
            CommandFailed: ``check`` and the command exited non-zero.
        """
        prefix = self._enter(name)
        if user is not None and user != "root":
            prefix += ["runuser", "-u", user, "--"]
        return await self.run([*prefix, *argv], check=check, env=env)

    async def psql(self, name: str, sql: str, *, check: bool = True) -> str:
        """Run ``sql`` on node ``name``'s PostgreSQL (local socket) and return the rows."""
        argv = ["psql", "-X", "-h", "/run/postgresql", "-d", "postgres", "-qAt", "-c", sql]
        result = await self.exec(name, argv, user="postgres", check=check)
        return result.stdout.strip()

    async def spawn(
        self,
        name: str,
        argv: Sequence[str],
        log: str,
        *,
        user: str = "root",
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Start a daemon inside node ``name``; the node's init adopts and reaps it.

        Its output is appended to ``<state-dir>/nodes/<name>/<log>``.
        """
        prefix = self._enter(name)
        env_argv = ["env", *(f"{k}={v}" for k, v in (env or {}).items())] if env else []
        as_user = ["runuser", "-u", user, "--"] if user != "root" else []
        # setsid -f forks: nsenter returns at once and the daemon is re-parented to init.
        full = [*prefix, "setsid", "-f", *env_argv, *as_user, *argv]
        log_path = self.node_dir(name) / log
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            result = await anyio.run_process(
                full, stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=False
            )
        if result.returncode != 0:
            raise CommandFailed(full, result.returncode, _tail(log_path))

    # ------------------------------------------------------------------ up
    def lab_exists(self) -> bool:
        """Whether any part of a lab is present (processes or namespaces)."""
        return bool(self.running_nodes()) or bool(_lab_netns())

    async def up(self, services: Sequence[Service] = ()) -> float:
        """Bring the whole lab up and wait until it is healthy; return the seconds taken.

        Raises:
            LabAlreadyUp: a running lab exists (``down`` it first).
            LabError: a step failed (the half-built lab is left for ``down``).
        """
        _require_root()
        if len(self.running_nodes()) == len(self.topology.all_nodes):
            raise LabAlreadyUp(str(self.state_dir))
        self.progress.restart()
        if self.lab_exists() or self.state_dir.exists():
            self.progress("found a half-built or stopped lab: removing it first")
            await self.down(quiet=True)
            self.progress.restart()
        self.services = list(services)
        await anyio.to_thread.run_sync(self._prepare_dirs)
        self.progress(f"state in {self.state_dir}: files rendered")
        await self._net_up()
        self.progress(f"network: bridge + {len(self.topology.all_nodes)} node namespaces")
        async with anyio.create_task_group() as tg:
            # The pre-seeded fence device's first monitor asks the helper: it must listen.
            tg.start_soon(self._start_fence_helper)
            for node in self.topology.all_nodes:
                tg.start_soon(self._start_init, node.name)
        self.progress("nodes: mount/UTS/PID namespaces and inits ready; fence helper listens")
        # Pacemaker elects its DC (no resources yet) while PostgreSQL bootstraps.
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for node in self.topology.nodes:
                    tg.start_soon(self._start_cluster_stack, node.name)
                    tg.start_soon(self._start_etcd, node.name)
                for node in self.topology.all_nodes:
                    tg.start_soon(self._start_pgbouncer, node.name)
                await self._bootstrap_postgres()
                self.progress("PostgreSQL bootstrapped: n1 primary, standbys cloned")
        self.progress("corosync, pacemaker, etcd and pgbouncers started")
        with anyio.fail_after(30):
            await self._release_clone()
        self.progress("PAF clone added to the CIB; waiting for a promoted primary")
        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._wait_services_up)
                await self.wait_healthy()
                self.progress("cluster healthy: one primary, one sync, one potential standby")
        for service in self.services:
            await self.start_service(service)
        if self.services:
            self.progress(f"services started: {', '.join(s.name for s in self.services)}")
        elapsed = self.progress.elapsed
        self.progress(f"lab up in {elapsed:.2f}s")
        return elapsed

    def _prepare_dirs(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o755)  # postgres must traverse it to reach its files
        (self.state_dir / "pids").mkdir(exist_ok=True)
        for marker, path in (
            ("created-run-netns", "/run/netns"),
            ("created-run-mount", "/run/mount"),
        ):
            if not Path(path).exists():
                (self.state_dir / marker).touch()
        self._write_state()
        self._write_fence_agent()
        for node in self.topology.all_nodes:
            self._prepare_node(node)

    @property
    def fence_socket(self) -> Path:
        """The fence helper's socket (:mod:`pgcm_lab.fenced`), named in the CIB."""
        return self.state_dir / "fence" / "fence.sock"

    def _write_fence_agent(self) -> None:
        directory = self.state_dir / _FENCE_BIN
        directory.mkdir(parents=True, exist_ok=True)
        agent = directory / "fence_pgcmlab"
        # This environment's Python, so the agent imports pgcm_lab from it.
        # The agent module itself, standard library only, run by the system's Python:
        # Pacemaker's controller reads its metadata as hacluster, who cannot reach this
        # environment's interpreter (or anything under /root).
        source = files("pgcm_lab").joinpath("fence_agent.py").read_text(encoding="utf-8")
        agent.write_text(f"#!{_SYSTEM_PYTHON}\n{source}", encoding="utf-8")
        agent.chmod(0o755)

    async def _start_fence_helper(self) -> None:
        ready = self.fence_socket.parent / "ready"
        ready.unlink(missing_ok=True)
        self.fence_socket.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "pgcm_lab.fenced", str(self.state_dir)]
        log = self.fence_socket.parent / "fenced.out"
        with log.open("ab") as out:
            proc = subprocess.Popen(  # noqa: ASYNC220  # returns at once: a daemon
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self._children["fenced"] = proc
        self._pid_file("fenced", "helper").write_text(f"{proc.pid}\n", encoding="utf-8")
        with anyio.fail_after(30):
            while not ready.exists():
                if proc.poll() is not None:
                    raise LabError(f"the fence helper exited: {_tail(log)}")
                await anyio.sleep(0.02)

    def _prepare_node(self, node: Node) -> None:
        base = self.node_dir(node.name)
        for source, target in self._mounts(node):
            if target == "/etc/hosts":
                continue
            (base / source).mkdir(parents=True, exist_ok=True)
        if not node.is_app:
            for rel, owner, mode in _OWNED_DIRS:
                path = base / rel
                path.mkdir(parents=True, exist_ok=True)
                _chown(path, owner)
                path.chmod(mode)
        else:
            _chown(base / "var-log-postgresql", "postgres")
            _chown(base / "etc-pgbouncer", "postgres")
        files = node_files(
            self.topology, node.name, with_resources=False, fence_socket=str(self.fence_socket)
        )
        self._write_rendered(node.name, files)
        spec: dict[str, object] = {"hostname": node.name, "mounts": self._mount_spec(node)}
        if not node.is_app:
            # fence_pgcmlab joins the node's /usr/sbin, where Pacemaker looks for agents.
            spec["overlays"] = [[str(self.state_dir / _FENCE_BIN), "/usr/sbin"]]
        (base / "init.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")

    def _write_rendered(self, name: str, files: Sequence[RenderedFile]) -> None:
        for item in files:
            target = self.host_path(name, item.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(item.content, encoding="utf-8")
            _chown(target, item.owner)
            target.chmod(item.mode)

    def _mount_spec(self, node: Node) -> list[list[str]]:
        base = self.node_dir(node.name)
        return [[str(base / source), target] for source, target in self._mounts(node)]

    async def _net_up(self) -> None:
        await self.run(["ip", "netns", "add", BRIDGE_NS])
        br = ["ip", "-n", BRIDGE_NS]
        await self.run([*br, "link", "set", "lo", "up"])
        await self.run([*br, "link", "add", "br0", "type", "bridge"])
        await self.run([*br, "link", "set", "br0", "up"])
        for node in self.topology.all_nodes:
            ns = f"{PREFIX}-{node.name}"
            port = f"v{node.name}"
            await self.run(["ip", "netns", "add", ns])
            await self.run(["ip", "-n", ns, "link", "set", "lo", "up"])
            # The veth pair is created in the bridge namespace: the host's never sees it.
            await self.run([*br, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                            "netns", ns])  # fmt: skip
            await self.run([*br, "link", "set", port, "master", "br0", "up"])
            prefix = self.topology.network.prefixlen
            await self.run(
                ["ip", "-n", ns, "addr", "add", f"{node.address}/{prefix}", "dev", "eth0"]
            )
            await self.run(["ip", "-n", ns, "link", "set", "eth0", "up"])

    async def _start_init(self, name: str) -> None:
        if name in self._children:
            # The node was powered off by someone else (the fence helper): reap the
            # unshare this object started before, or it lingers as a zombie.
            await self._reap_unshare(name)
        base = self.node_dir(name)
        ready = base / "run" / "pgcm" / "ready"
        ready.unlink(missing_ok=True)
        argv = [
            "ip", "netns", "exec", f"{PREFIX}-{name}",
            "unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc",
            sys.executable, "-m", "pgcm_lab.init", str(base / "init.json"),
        ]  # fmt: skip
        log = (base / "init.log").open("ab")
        try:
            proc = await anyio.to_thread.run_sync(
                lambda: subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        finally:
            log.close()
        self._children[name] = proc
        self._pid_file(name, "unshare").write_text(f"{proc.pid}\n", encoding="utf-8")
        with anyio.fail_after(15):
            while not ready.exists():
                if proc.poll() is not None:
                    raise LabError(f"node {name} init exited: {_tail(base / 'init.log')}")
                await anyio.sleep(0.02)
        children_file = anyio.Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        children = (await children_file.read_text()).split()
        if not children:
            raise LabError(f"node {name}: no init process under unshare {proc.pid}")
        self._pid_file(name, "init").write_text(f"{children[0]}\n", encoding="utf-8")

    async def _start_cluster_stack(self, name: str) -> None:
        await self._start_corosync(name)
        await self._start_pacemaker(name)

    async def _release_clone(self) -> None:
        first = self.topology.nodes[0].name
        argv = provision.release_clone_argv(self.topology, fencing=True)
        while (await self.exec(first, argv, check=False)).returncode != 0:
            await anyio.sleep(0.1)

    async def _wait_services_up(self) -> None:
        await self.wait_etcd_healthy()
        await self.wait_bouncers()
        self.progress("etcd healthy; pgbouncers answer")

    async def _start_corosync(self, name: str) -> None:
        await self.spawn(name, provision.corosync_argv(), "corosync.out")
        with anyio.fail_after(15):
            while (await self.exec(name, ["corosync-cfgtool", "-s"], check=False)).returncode:
                await anyio.sleep(0.05)

    async def _start_pacemaker(self, name: str) -> None:
        await self.spawn(name, ["pacemakerd"], "pacemaker.out", env=provision.PACEMAKER_ENV)

    async def _start_etcd(self, name: str) -> None:
        node = self.topology.node(name)
        await self.spawn(name, etcd_argv(self.topology, node), "etcd.log")

    async def start_etcd(self, name: str) -> None:
        """Start node ``name``'s etcd member again (after a test stopped it)."""
        await self._start_etcd(self.topology.node(name).name)

    async def _start_pgbouncer(self, name: str) -> None:
        await self.spawn(name, provision.pgbouncer_argv(), "pgbouncer.out", user="postgres")

    async def _bootstrap_postgres(self) -> None:
        first, *rest = self.topology.nodes
        await self.exec(first.name, provision.initdb_argv(), user="postgres")
        data = self.host_path(first.name, PGDATA)
        with (data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(render_postgresql_conf(self.topology))
        with (data / "pg_hba.conf").open("a", encoding="utf-8") as hba:
            hba.write(render_pg_hba(self.topology))
        await self.exec(first.name, provision.bootstrap_start_argv(), user="postgres")
        await self.psql(first.name, provision.CREATE_REPLICATOR)
        async with anyio.create_task_group() as tg:
            for node in rest:
                tg.start_soon(self._clone_from, node.name, first)
        await self.exec(first.name, provision.stop_argv(), user="postgres")

    async def _clone_from(self, name: str, source: Node) -> None:
        await self.exec(name, provision.clone_argv(source), user="postgres")
        signal_file = self.host_path(name, f"{PGDATA}/standby.signal")
        signal_file.touch()
        _chown(signal_file, "postgres")

    # ------------------------------------------------------------------ health
    async def crm_mon_xml(self, name: str | None = None) -> str:
        """``crm_mon -1 --output-as=xml`` as seen from node ``name`` (or any live node)."""
        names = [name] if name else [n for n in self.running_nodes() if n != APP_NODE]
        if not names:
            raise LabNotUp("the lab")
        last: Exception | None = None
        for candidate in names:
            try:
                argv = ["crm_mon", "-1", "--output-as=xml"]
                return (await self.exec(candidate, argv)).stdout
            except LabError as exc:
                last = exc
        raise LabError(f"no node answered crm_mon: {last}")

    async def view(self, name: str | None = None) -> ClusterView:
        """The parsed cluster view from node ``name`` (or the first live node)."""
        return parse_crm_mon(await self.crm_mon_xml(name))

    async def replication(self, primary: str) -> dict[str, tuple[str, str]]:
        """``application_name -> (state, sync_state)`` from the primary's pg_stat_replication."""
        rows = await self.psql(
            primary, "select application_name, state, sync_state from pg_stat_replication"
        )
        out: dict[str, tuple[str, str]] = {}
        for row in rows.splitlines():
            app, state, sync = row.split("|")
            out[app] = (state, sync)
        return out

    async def healthy(self, expect: Sequence[str] | None = None) -> str | None:
        """Return the primary when the cluster is healthy, else None (see :meth:`health`)."""
        primary, _ = await self.health(expect)
        return primary

    async def health(self, expect: Sequence[str] | None = None) -> tuple[str | None, str]:
        """Return ``(primary, "")`` when the cluster is healthy, else ``(None, why not)``.

        Healthy: every expected node online with quorum, exactly one promoted node,
        among them, which accepts writes, every other expected node streaming from it
        (one ``sync``), and no negative promotion score (otherwise a later failure
        promotes nobody).
        """
        wanted = list(expect or [n.name for n in self.topology.nodes])
        try:
            view = await self.view(wanted[0] if self.init_pid(wanted[0]) else None)
        except LabError as exc:
            return None, f"no cluster view: {exc}"
        primary, why = _view_health(view, wanted)
        if primary is None:
            return None, why
        why = await self._postgres_health(primary, [n for n in wanted if n != primary])
        return (None, why) if why else (primary, "")

    async def _postgres_health(self, primary: str, standbys: Sequence[str]) -> str:
        """PostgreSQL's part of :meth:`health`: "" or why it is not healthy."""
        try:
            if await self.psql(primary, "select pg_is_in_recovery()", check=False) != "f":
                return f"{primary} does not accept writes"
            repl = await self.replication(primary)
        except (LabError, ValueError) as exc:
            return f"{primary} cannot be asked: {exc}"
        if lagging := {n: repl.get(n, ("absent", ""))[0] for n in standbys
                       if repl.get(n, ("", ""))[0] != "streaming"}:  # fmt: skip
            return f"standbys not streaming from {primary}: {lagging}"
        syncs = [n for n in standbys if repl[n][1] == "sync"]
        if standbys and len(syncs) != 1:
            return f"{len(syncs)} synchronous standbys instead of 1: {repl}"
        return ""

    async def wait_healthy(self, expect: Sequence[str] | None = None) -> str:
        """Wait (caller bounds it) until :meth:`healthy`; return the primary.

        Each new reason the cluster is not healthy is reported on the progress line, so
        a wait that runs out says what it waited for.
        """
        last = ""
        while True:
            primary, why = await self.health(expect)
            if primary is not None:
                return primary
            if why != last:
                self.progress(f"not healthy yet: {why}")
                last = why
            await anyio.sleep(_POLL)

    async def primary(self) -> str | None:
        """The promoted node as the first live node sees it."""
        return (await self.view()).primary

    async def wait_etcd_healthy(self) -> None:
        """Wait until every etcd member answers ``endpoint health``."""
        for node in self.topology.nodes:
            while not await self._etcd_ok(node.name):
                await anyio.sleep(_POLL)

    async def _etcd_ok(self, name: str) -> bool:
        argv = ["etcdctl", "--endpoints=http://127.0.0.1:2379", "--command-timeout=2s",
                "endpoint", "health"]  # fmt: skip
        result = await self.exec(name, argv, check=False, env={"ETCDCTL_API": "3"})
        return result.returncode == 0

    async def _bouncer_ok(self, name: str) -> bool:
        argv = ["psql", "-X", "-h", "/run/pgbouncer", "-p", "6432", "-U", "postgres", "-d",
                "pgbouncer", "-qAt", "-c", "SHOW VERSION"]  # fmt: skip
        result = await self.exec(name, argv, user="postgres", check=False)
        return result.returncode == 0

    async def wait_bouncers(self) -> None:
        """Wait until every PgBouncer's admin console answers."""
        for node in self.topology.all_nodes:
            while not await self._bouncer_ok(node.name):
                await anyio.sleep(_POLL)

    # ------------------------------------------------------------------ operations
    async def switchover(self, target: str, *, repoint: bool = True) -> SwitchoverResult:
        """Move the primary to ``target`` with Pacemaker's own move, then clear it safely.

        Waits until the target accepts writes, then until the scores have settled
        (clearing earlier moves the primary back), then clears the constraint,
        points every lab PgBouncer at the new primary (unless ``repoint`` is false,
        e.g. when pgcm-proxy does that) and waits for both standbys to stream again.
        """
        target = self.topology.node(target).name
        source = await self.primary()
        t0 = time.monotonic()
        if source == target:
            self.progress(f"{target} is already the primary")
            return SwitchoverResult(source, target, 0.0, 0.0, 0.0)
        self.progress(f"switchover {source} -> {target}: crm_resource --move --promoted")
        await self.exec(target, ["crm_resource", "--resource", CLONE, "--move", "--promoted",
                                 "--node", target])  # fmt: skip
        with anyio.fail_after(60):
            while await self.psql(target, "select pg_is_in_recovery()", check=False) != "f":
                await anyio.sleep(0.1)
            writable = time.monotonic() - t0
            self.progress(f"{target} accepts writes after {writable:.2f}s")
            if repoint:
                await self.point_bouncers(target)
            while not (await self.view(target)).settled_on(target):
                await anyio.sleep(_POLL)
            settled = time.monotonic() - t0
        await self.exec(target, ["crm_resource", "--resource", CLONE, "--clear"])
        self.progress(f"scores settled after {settled:.2f}s; move constraint cleared")
        with anyio.fail_after(60):
            await self.wait_healthy()
        total = time.monotonic() - t0
        self.progress(f"switchover done in {total:.2f}s: standbys stream from {target}")
        return SwitchoverResult(source, target, writable, settled, total)

    async def point_bouncers(self, primary: str) -> None:
        """Point every running lab PgBouncer at ``primary`` and RELOAD it."""
        async with anyio.create_task_group() as tg:
            for node in self.topology.all_nodes:
                if self.init_pid(node.name) is not None:
                    tg.start_soon(self._point_bouncer, node.name, primary)

    async def _point_bouncer(self, name: str, primary: str) -> None:
        files = [f for f in node_files(self.topology, name, primary) if "pgbouncer.ini" in f.path]
        await anyio.to_thread.run_sync(self._write_rendered, name, files)
        argv = ["psql", "-X", "-h", "/run/pgbouncer", "-p", "6432", "-U", "postgres", "-d",
                "pgbouncer", "-qAt", "-c", "RELOAD"]  # fmt: skip
        await self.exec(name, argv, user="postgres", check=False)

    async def kill_node(self, name: str) -> None:
        """SIGKILL node ``name``'s init: the kernel ends every process in the node."""
        name = self.topology.node(name).name
        pid = self.init_pid(name)
        if pid is None:
            raise LabNotUp(f"node {name}")
        self.progress(f"SIGKILL node {name} (init pid {pid})")
        await self._kill_pid(pid)
        await self._reap_unshare(name)
        self._pid_file(name, "init").unlink(missing_ok=True)

    def processes(self, name: str) -> list[tuple[int, str]]:
        """``(host pid, command name)`` of every process in node ``name``'s PID namespace."""
        pid = self.init_pid(name)
        if pid is None:
            raise LabNotUp(f"node {name}")
        namespace = str(Path(f"/proc/{pid}/ns/pid").readlink())
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if str((entry / "ns" / "pid").readlink()) == namespace:
                        found.append((int(entry.name), (entry / "comm").read_text().strip()))
        return found

    async def hang(self, name: str, *, only: str | None = None) -> list[int]:
        """SIGSTOP every process of node ``name`` (or only those whose command is ``only``).

        The node's init too: nothing in it runs until it is fenced (SIGKILL reaches
        stopped processes) or :meth:`unhang` sends SIGCONT. Returns the stopped PIDs.
        """
        name = self.topology.node(name).name
        victims = [pid for pid, comm in self.processes(name) if only is None or comm == only]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, SIGSTOP)
        what = "every process" if only is None else f"every {only} process"
        self.progress(f"SIGSTOP {what} of node {name} ({len(victims)})")
        return victims

    async def unhang(self, name: str) -> None:
        """SIGCONT every process of node ``name`` (undo :meth:`hang`)."""
        for pid, _ in self.processes(self.topology.node(name).name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, SIGCONT)

    async def start_node(self, name: str) -> None:
        """(Re)start a stopped node: init, corosync, pacemaker, etcd, PgBouncer, services.

        An ex-primary that must become a standby is better brought back with
        :meth:`rejoin`, which bans it first so Pacemaker does not start it diverged.
        """
        node = self.topology.node(name)
        if self.init_pid(node.name) is not None:
            raise LabError(f"node {node.name} is already running")
        if not node.is_app:
            # The node's PID namespace died with it: a leftover postmaster.pid names a PID
            # that may belong to another process in the new namespace.
            self.host_path(node.name, f"{PGDATA}/postmaster.pid").unlink(missing_ok=True)
        # The same for PgBouncer's pidfile in the node's persistent /run: with it left
        # behind, PgBouncer refuses to start ("pidfile exists, another instance running?").
        self.host_path(node.name, "/run/pgbouncer/pgbouncer.pid").unlink(missing_ok=True)
        await self._start_init(node.name)
        await self._start_node_stack(node.name)

    async def _start_node_stack(self, name: str) -> None:
        node = self.topology.node(name)
        if not node.is_app:
            await self._start_corosync(node.name)
            await self._start_pacemaker(node.name)
            await self._start_etcd(node.name)
        await self._start_pgbouncer(node.name)
        for service in self.services:
            if node.name in self._service_nodes(service):
                await self._spawn_service(service, node.name)
        self.progress(f"node {node.name} started")

    async def partition(self, name: str) -> None:
        """Cut node ``name``'s link at the bridge (its processes keep running)."""
        node = self.topology.node(name)
        await self.run(["ip", "-n", BRIDGE_NS, "link", "set", f"v{node.name}", "down"])
        self.progress(f"{node.name} partitioned")

    async def heal(self, name: str) -> None:
        """Restore node ``name``'s link."""
        node = self.topology.node(name)
        await self.run(["ip", "-n", BRIDGE_NS, "link", "set", f"v{node.name}", "up"])
        self.progress(f"{node.name} healed")

    async def partitioned(self, name: str) -> bool:
        """Whether node ``name``'s bridge port is down."""
        node = self.topology.node(name)
        out = await self.run(["ip", "-n", BRIDGE_NS, "-o", "link", "show", f"v{node.name}"])
        flags = out.stdout.split("<", 1)[1].split(">", 1)[0].split(",")
        return "UP" not in flags

    async def rejoin(self, name: str) -> str:
        """Bring an ex-primary (crashed, partitioned or diverged) back as a standby.

        Ban it, heal/start it when needed, pg_rewind from the primary (falling back to
        pg_basebackup), add standby.signal, clear the ban, clean up and wait for health.
        Returns the method used: ``pg_rewind`` or ``pg_basebackup``.
        """
        name = self.topology.node(name).name
        others = [n.name for n in self.topology.others(name) if self.init_pid(n.name)]
        if not others:
            raise LabNotUp("every other node")
        with anyio.fail_after(60):
            primary = None
            while primary is None or primary == name:
                primary = (await self.view(others[0])).primary
                await anyio.sleep(_POLL) if primary in {None, name} else None
        self.progress(f"rejoin {name}: ban it, then rebuild it from {primary}")
        await self._ban(name, primary)
        if await self.partitioned(name):
            await self.heal(name)
        powered_off = self.init_pid(name) is None
        if not powered_off:
            try:
                await self._until_kept_stopped(name, primary)
            except LabError:
                # A stop that fails (the postmaster Pacemaker lost track of) gets the
                # node fenced meanwhile: then rebuild it powered off, as below.
                if self.init_pid(name) is not None:
                    raise
                powered_off = True
                self.progress(f"{name} was fenced while it rejoined")
        if powered_off:
            # Fenced or crashed: rebuild it before its Pacemaker starts. Probed as it was
            # left, a crashed primary's data directory reads as a failed primary, whose
            # demote fails, and the cluster fences the node again.
            self.host_path(name, f"{PGDATA}/postmaster.pid").unlink(missing_ok=True)
            self.host_path(name, "/run/pgbouncer/pgbouncer.pid").unlink(missing_ok=True)
            await self._start_init(name)
        method = await self._rebuild(name, self.topology.node(primary))
        self._mark_standby(name)
        if powered_off:
            await self._start_node_stack(name)
        await self._unban(name, primary)
        if why := await self._wait_rejoined(name, primary):
            method = await self._rebuild_fully(name, primary, why)
        self.progress(f"{name} streams again ({method})")
        return method

    async def _rebuild_fully(self, name: str, primary: str, why: str) -> str:
        """Rewound, yet not streaming: stop it, copy the primary whole, wait again.

        A fault-suite run saw a rewound node stay in walsender "startup" after a
        promotion PAF had first refused; a full copy from the primary always can.

        Raises:
            LabError: not healthy after that either; names why, with crm_mon's view.
        """
        tail = self._postgres_log_tail(name)
        self.progress(f"{name} has not rejoined ({why}); its PostgreSQL log ends:\n{tail}\n"
                      "rebuilding it with pg_basebackup")  # fmt: skip
        await self._ban(name, primary)
        await self._until_kept_stopped(name, primary)
        await self._rebuild(name, self.topology.node(primary), full=True)
        self._mark_standby(name)
        await self._unban(name, primary)
        if why := await self._wait_rejoined(name, primary):
            raise LabError(
                f"{name} did not rejoin after a full rebuild ({why}); crm_mon:\n"
                f"{await self.crm_mon_text()}"
            )
        return "pg_basebackup"

    async def _ban(self, name: str, primary: str) -> None:
        await self.exec(primary, ["crm_resource", "--resource", CLONE, "--ban", "--node", name,
                                  "--lifetime", "PT10M"])  # fmt: skip

    async def _unban(self, name: str, primary: str) -> None:
        await self.exec(primary, ["crm_resource", "--resource", CLONE, "--clear", "--node", name])
        await self.exec(primary, ["crm_resource", "--cleanup", "--resource", CLONE, "--node",
                                  name])  # fmt: skip

    def _mark_standby(self, name: str) -> None:
        signal_file = self.host_path(name, f"{PGDATA}/standby.signal")
        signal_file.touch()
        _chown(signal_file, "postgres")

    def _postgres_log_tail(self, name: str, lines: int = 15) -> str:
        log = self.node_dir(name) / "var-log-postgresql" / "postgresql.log"
        try:
            return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    async def _wait_rejoined(self, name: str, primary: str) -> str:
        """Wait until the cluster is healthy with ``name`` back; return "" or why not.

        A start that failed while the node came back (PAF's probe raced the rebuild)
        leaves a fail count that keeps the instance stopped until a cleanup: one more
        cleanup after ``_REJOIN_CLEANUP_S`` lets Pacemaker try again.
        """
        with anyio.move_on_after(_REJOIN_CLEANUP_S):
            await self.wait_healthy()
            return ""
        self.progress(f"{name} has not rejoined after {_REJOIN_CLEANUP_S:.0f} s: clean up again")
        await self.exec(primary, ["crm_resource", "--cleanup", "--resource", CLONE, "--node",
                                  name], check=False)  # fmt: skip
        with anyio.move_on_after(_REJOIN_S - _REJOIN_CLEANUP_S):
            await self.wait_healthy()
            return ""
        _, why = await self.health()
        return why or "healthy only just now"

    async def crm_mon_text(self) -> str:
        """``crm_mon -1 -rf`` (inactive resources and fail counts) from any live node."""
        for name in (n for n in self.running_nodes() if n != APP_NODE):
            result = await self.exec(name, ["crm_mon", "-1", "-rf"], check=False)
            if result.returncode == 0:
                return result.stdout
        return "(no node answered crm_mon)"

    async def _until_kept_stopped(self, name: str, primary: str) -> None:
        """Wait until the whole cluster keeps ``name``'s instance stopped, and it is.

        Right after a heal (or a restart) the node is still rejoining, and what its
        Pacemaker did alone cannot be trusted. A fault-suite run showed the minority
        side's demote restart PostgreSQL as a standby, whose postmaster.pid then went
        missing, so PAF's stop failed ("PID file does not exist") and left that
        postmaster running. The data directory was rebuilt under it and it shut down
        with "lock file is invalid". So, with the ban in place: wait until the primary's
        view has the node online; clean up its instance (Pacemaker forgets the failed
        stop and probes again); let the cluster settle; then look for a postmaster in
        the node's own PID namespace, not for a pidfile, and shut down (SIGINT, fast)
        one that Pacemaker lost track of.

        Raises:
            TimeoutError: not within 120 s.
        """
        cleanup = ["crm_resource", "--cleanup", "--resource", CLONE, "--node", name]
        with anyio.fail_after(120):
            while name not in (view := await self.view(primary)).online or not view.quorum:
                await anyio.sleep(_POLL)
            while True:
                await self.exec(primary, cleanup)
                # Short: a failed stop keeps the cluster from settling at all, and the
                # postmaster it left shuts itself down (immediately) within a minute.
                await self.exec(primary, ["crm_resource", "--wait", "--timeout=10s"], check=False)
                view = await self.view(primary)
                if name in {*view.promoted, *view.unpromoted}:
                    await anyio.sleep(_POLL)  # the cluster has not stopped it yet
                    continue
                # Stopped, or failed to stop: either way only our own eyes can tell.
                strays = await self._postmasters(name)
                if not strays:
                    return
                self.progress(f"{name}: postmaster {strays} runs unknown to Pacemaker; SIGINT")
                for pid in strays:
                    await self.exec(name, ["kill", "-INT", str(pid)], check=False)
                await anyio.sleep(1)

    async def _postmasters(self, name: str) -> list[int]:
        """PIDs of the postmasters running in node ``name`` (its own PID namespace)."""
        listing = await self.exec(name, ["ps", "-e", "-o", "pid=,ppid=,comm="])
        return postmaster_pids(listing.stdout)

    async def _rebuild(self, name: str, primary: Node, *, full: bool = False) -> str:
        """Make ``name``'s data directory a copy of ``primary``'s: pg_rewind, else a base backup."""
        source = f"host={primary.address} user=postgres dbname=postgres"
        rewind = [f"{PG_BINDIR}/pg_rewind", "-D", PGDATA, f"--source-server={source}"]
        # A demoted ex-primary that went down uncleanly has standby.signal: pg_rewind's
        # crash recovery in single-user mode refuses standby mode, so it would fail and
        # fall back to a full copy. rejoin writes standby.signal again afterwards.
        for signal in ("standby.signal", "recovery.signal"):
            self.host_path(name, f"{PGDATA}/{signal}").unlink(missing_ok=True)
        if not full:
            result = await self.exec(name, rewind, user="postgres", check=False)
            if result.returncode == 0:
                return "pg_rewind"
            self.progress(f"pg_rewind failed ({result.stderr.strip()[-200:]}); pg_basebackup")
        data = self.host_path(name, PGDATA)
        await anyio.to_thread.run_sync(shutil.rmtree, data)
        await self._clone_from(name, primary)
        return "pg_basebackup"

    async def load(self, seconds: float = 10, clients: int = 4) -> LoadReport:
        """Run pgbench through the app node's PgBouncer and report what clients saw."""
        primary = await self.primary()
        if primary is None:
            raise LabError("no primary: cannot initialise pgbench tables")
        have = await self.psql(primary, "select to_regclass('pgbench_accounts') is not null")
        if have != "t":
            await self.exec(primary, ["pgbench", "-i", "-q", "-s", "1", "-h", "/run/postgresql",
                                      "postgres"], user="postgres")  # fmt: skip
        logs = self.state_dir / "load"
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(logs, ignore_errors=True))
        logs.mkdir(parents=True)
        argv = [
            *self._enter(APP_NODE, net_only=True),
            "pgbench", "-h", str(self.topology.app.address), "-p", "6432", "-U", "postgres",
            "-n", "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(int(seconds)),
            "-l", f"--log-prefix={logs}/pgbench", "postgres",
        ]  # fmt: skip
        self.progress(f"pgbench: {clients} clients for {seconds:.0f}s through app:6432")
        result = await self.run(argv, check=False)
        worst = await anyio.to_thread.run_sync(_max_latency_in, logs)
        return parse_pgbench(
            result.stdout, result.stderr, clients=clients, seconds=seconds, latency_max_ms=worst
        )

    # ------------------------------------------------------------------ services hook
    def _service_nodes(self, service: Service) -> list[str]:
        if service.node == "db":
            return [n.name for n in self.topology.nodes]
        if service.node == "all":
            return [n.name for n in self.topology.all_nodes]
        return [self.topology.node(service.node).name]

    async def start_service(self, service: Service) -> None:
        """Start ``service`` on its nodes and remember it for ``start-node``."""
        if service not in self.services:
            self.services.append(service)
            self._write_state()
        for name in self._service_nodes(service):
            await self._spawn_service(service, name)

    async def _spawn_service(self, service: Service, name: str) -> None:
        node = self.topology.node(name)
        argv = [a.format(node=node.name, address=node.address) for a in service.argv]
        if service.restart:
            argv = ["sh", "-c", _RESTART_ON_FAILURE, service.name, *argv]
        log = f"services/{service.name}.log"
        await self.spawn(name, argv, log, user=service.user, env=service.env)

    # ------------------------------------------------------------------ status
    async def status(self) -> dict[str, object]:
        """Everything ``pgcm-lab status`` shows, as a JSON-ready dict.

        Every probe is bounded (:func:`pgcm_lab.probe.bounded`): a frozen component shows
        as ``"no answer"`` and is listed under ``no_answer``, never hangs the status.
        """
        running = self.running_nodes()
        silent: list[str] = []
        nodes: list[dict[str, object]] = []
        view: ClusterView | None = None
        if [n for n in running if n != APP_NODE]:
            with contextlib.suppress(LabError):
                got = await bounded(self.view)
                view = None if got == NO_ANSWER else got
                if got == NO_ANSWER:
                    silent.append("crm_mon")
        repl: dict[str, tuple[str, str]] = {}
        if view is not None and view.primary is not None:
            primary = view.primary
            with contextlib.suppress(LabError, ValueError):
                got_repl = await bounded(functools.partial(self.replication, primary))
                if got_repl == NO_ANSWER:
                    silent.append(f"postgresql on {primary}")
                else:
                    repl = got_repl
        for node in self.topology.all_nodes:
            up = node.name in running
            entry: dict[str, object] = {"name": node.name, "address": str(node.address),
                                        "running": up}  # fmt: skip
            if up and not node.is_app:
                entry["etcd"] = await bounded(functools.partial(self._etcd_ok, node.name))
            if up:
                entry["pgbouncer"] = await bounded(functools.partial(self._bouncer_ok, node.name))
            silent += [f"{part} on {node.name}" for part in ("etcd", "pgbouncer")
                       if entry.get(part) == NO_ANSWER]  # fmt: skip
            if not node.is_app:
                entry["online"] = view is not None and node.name in view.online
                entry["score"] = view.scores.get(node.name) if view else None
                entry["role"] = status_role(node.name, view, repl, up=up)
            nodes.append(entry)
        return {
            "state_dir": str(self.state_dir),
            "up": bool(running),
            "primary": view.primary if view else None,
            "quorum": view.quorum if view else False,
            "dc": view.dc if view else None,
            "nodes": nodes,
            "no_answer": silent,
        }

    # ------------------------------------------------------------------ down
    async def down(self, *, quiet: bool = False) -> float:
        """Remove everything the lab made; safe to run at any time, any number of times."""
        _require_root()
        t0 = time.monotonic()
        pids = self.state_dir / "pids"
        async with anyio.create_task_group() as tg:
            for node in self.topology.all_nodes:
                if (pid := self.init_pid(node.name)) is not None:
                    tg.start_soon(self._kill_pid, pid)
        if (child := self._children.pop("fenced", None)) is not None:
            # Our own child: end it through its Popen and collect its status, so neither
            # a zombie nor a Popen still "running" is left behind.
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            with anyio.move_on_after(10):
                await anyio.to_thread.run_sync(child.wait)
        helper = self._pid_file("fenced", "helper")
        with contextlib.suppress(ValueError, OSError):
            pid = int(helper.read_text().strip())
            # Only our own helper: a stale file may name a PID reused since.
            if _cmdline_has(pid, "pgcm_lab.fenced"):
                await self._kill_pid(pid)
            _reap(pid)
        for unshare in pids.glob("*.unshare") if pids.is_dir() else []:
            with contextlib.suppress(ValueError, OSError):
                pid = int(unshare.read_text().strip())
                # Only our own unshare: a stale file may name a PID reused since.
                if _cmdline_has(pid, "pgcm_lab.init"):
                    await self._kill_pid(pid)
                _reap(pid)
        for name in list(self._children):
            await self._reap_unshare(name)
        for ns in _lab_netns():
            await self.run(["ip", "netns", "del", ns], check=False)
        self._remove_run_dirs()
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(self.state_dir, ignore_errors=True))
        elapsed = time.monotonic() - t0
        if not quiet:
            self.progress(f"lab down in {elapsed:.2f}s")
        return elapsed

    def _remove_run_dirs(self) -> None:
        netns = Path("/run/netns")
        created = (self.state_dir / "created-run-netns").exists()
        if created and netns.is_dir() and not any(netns.iterdir()):
            # iproute2 made /run/netns a bind mount of itself: unmount, then remove.
            subprocess.run(["umount", str(netns)], check=False, capture_output=True)
            with contextlib.suppress(OSError):
                netns.rmdir()
        mount = Path("/run/mount")
        if (self.state_dir / "created-run-mount").exists() and mount.is_dir():
            with contextlib.suppress(OSError):
                mount.rmdir()

    async def _kill_pid(self, pid: int) -> None:
        if not _alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        with anyio.fail_after(10):
            while _alive(pid):
                _reap(pid)
                await anyio.sleep(0.01)

    async def _reap_unshare(self, name: str) -> None:
        if (child := self._children.pop(name, None)) is not None:
            with anyio.move_on_after(5):
                while child.poll() is None:
                    await anyio.sleep(0.01)
        path = self._pid_file(name, "unshare")
        with contextlib.suppress(ValueError, OSError):
            pid = int(path.read_text().strip())
            with anyio.move_on_after(5):
                while _alive(pid):
                    _reap(pid)
                    await anyio.sleep(0.01)
            path.unlink()


def node_pids(lab: Lab) -> list[int]:
    """Host PIDs of every process inside the lab's nodes (their PID namespaces)."""
    namespaces = set()
    for name in lab.running_nodes():
        pid = lab.init_pid(name)
        with contextlib.suppress(OSError):
            namespaces.add(str(Path(f"/proc/{pid}/ns/pid").readlink()))
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str((entry / "ns" / "pid").readlink()) in namespaces:
                    found.append(int(entry.name))
    return found


def lab_leftovers(lab: Lab, pids: Sequence[int] = ()) -> list[str]:
    """What a lab left behind: namespaces, live processes, mounts (empty when clean)."""
    left = [f"netns {ns}" for ns in _lab_netns()]
    left += [f"process {pid}" for pid in pids if _alive(pid)]
    left += [f"node {name} running" for name in lab.running_nodes()]
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    left += [f"mount {line.split()[4]}" for line in mounts
             if f"{PREFIX}-" in line or str(lab.state_dir) in line]  # fmt: skip
    return left


def postmaster_pids(ps_output: str) -> list[int]:
    """The postmasters in ``ps -e -o pid=,ppid=,comm=`` output, sorted.

    A postmaster is a ``postgres`` process whose parent is not one: its backends and
    auxiliary processes are its children. Lines that are not three fields are skipped.
    """
    parents: dict[int, int] = {}
    for line in ps_output.splitlines():
        fields = line.split(None, 2)
        if len(fields) == 3 and fields[2].strip() == "postgres":  # noqa: PLR2004 - pid, ppid, comm
            parents[int(fields[0])] = int(fields[1])
    return sorted(pid for pid, parent in parents.items() if parent not in parents)


def status_role(
    name: str, view: ClusterView | None, repl: Mapping[str, tuple[str, str]], *, up: bool
) -> str:
    """The role ``pgcm-lab status`` shows for node ``name``.

    ``repl`` maps standbys to their (state, sync_state) in the primary's
    pg_stat_replication; ``up`` says whether the node's namespaces run.
    """
    if not up:
        return "down"
    if view is None:
        return "unknown"
    if name == view.primary:
        return "primary"
    if name in view.failed:
        return "failed"
    if name in repl:
        state, sync = repl[name]
        return sync if state == "streaming" else state
    return "standby" if name in view.unpromoted else "stopped"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # A zombie has exited: only its parent's wait() is missing.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _cmdline_has(pid: int, marker: str) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _lab_netns() -> list[str]:
    netns = Path("/run/netns")
    if not netns.is_dir():
        return []
    return sorted(p.name for p in netns.iterdir() if p.name.startswith(f"{PREFIX}-"))


def _chown(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _max_latency_in(logs: Path) -> float | None:
    values = []
    for log in logs.glob("pgbench*"):
        with log.open(encoding="utf-8", errors="replace") as handle:
            value = max_latency_ms(handle)
        if value is not None:
            values.append(value)
    return max(values) if values else None


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network, mount and PID namespaces)")


def quote(argv: Sequence[str]) -> str:
    """``argv`` as a shell line (for messages)."""
    return shlex.join(argv)


def _view_health(view: ClusterView, wanted: Sequence[str]) -> tuple[str | None, str]:
    """Pacemaker's part of :meth:`Lab.health`: ``(primary, "")`` or ``(None, why not)``."""
    primary = view.primary
    problems = {
        "no quorum": not view.quorum,
        f"not online: {', '.join(sorted(set(wanted) - view.online))}": not set(wanted)
        <= view.online,
        "no promoted node": primary is None,
        # A partitioned primary still answers through its own namespace, and its
        # standbys' streams take a while to time out: only the expected nodes count.
        f"the promoted node {primary} is not one of {', '.join(wanted)}": primary is not None
        and primary not in wanted,
        f"negative or missing promotion scores: "
        f"{ {n: view.scores.get(n) for n in wanted if view.scores.get(n, -1) < 0} }": any(
            view.scores.get(n, -1) < 0 for n in wanted
        ),
    }
    why = next((text for text, bad in problems.items() if bad), "")
    return (None, why) if why else (primary, "")
