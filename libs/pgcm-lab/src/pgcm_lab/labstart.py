# ruff: noqa: ASYNC110  # we poll other processes' state: there is no event to await
"""Bringing the lab up, and (re)starting one node.

Directories, network, each node's init, Corosync, Pacemaker, etcd, PgBouncer,
PostgreSQL and the services.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Final

import anyio

from pgcm_lab import legacy, provision
from pgcm_lab.errors import LabAlreadyUp, LabError
from pgcm_lab.labcore import (
    BRIDGE_NS,
    PREFIX,
    Service,
    chown_to,
    file_tail,
    lab_netns,
    require_root,
)
from pgcm_lab.labdown import LabTeardown
from pgcm_lab.render import (
    RenderedFile,
    etcd_argv,
    node_files,
    render_pg_hba,
    render_postgresql_conf,
)
from pgcm_lab.topology import PGDATA, Node

__all__ = ["LabStart"]

_FENCE_BIN: Final = "fence-bin"
_LEGACY_AGENT_DIR: Final = "ocf-heartbeat"
_SYSTEM_PYTHON: Final = "/usr/bin/python3"
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


class LabStart(LabTeardown):
    """Start the lab, one node, or a service in its nodes."""

    def lab_exists(self) -> bool:
        """Whether any part of a lab is present (processes or namespaces)."""
        return bool(self.running_nodes()) or bool(lab_netns())

    async def up(self, services: Sequence[Service] = ()) -> float:
        """Bring the whole lab up and wait until it is healthy; return the seconds taken.

        Raises:
            LabAlreadyUp: a running lab exists (``down`` it first).
            LabError: a step failed (the half-built lab is left for ``down``).
        """
        require_root()
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
        if self.topology.legacy:
            legacy.write_patched_agent(self.state_dir / _LEGACY_AGENT_DIR)
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
                    raise LabError(f"the fence helper exited: {file_tail(log)}")
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
                chown_to(path, owner)
                path.chmod(mode)
        else:
            chown_to(base / "var-log-postgresql", "postgres")
            chown_to(base / "etc-pgbouncer", "postgres")
        files = node_files(
            self.topology, node.name, with_resources=False, fence_socket=str(self.fence_socket)
        )
        self._write_rendered(node.name, files)
        spec: dict[str, object] = {"hostname": node.name, "mounts": self._mount_spec(node)}
        if not node.is_app:
            # fence_pgcmlab joins the node's /usr/sbin, where Pacemaker looks for agents.
            overlays = [[str(self.state_dir / _FENCE_BIN), "/usr/sbin"]]
            if self.topology.legacy:
                # The fixed legacy agent hides the installed one, in this node only.
                overlays.append([str(self.state_dir / _LEGACY_AGENT_DIR), legacy.AGENT_DIR])
            spec["overlays"] = overlays
        (base / "init.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")

    def _write_rendered(self, name: str, files: Sequence[RenderedFile]) -> None:
        for item in files:
            target = self.host_path(name, item.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(item.content, encoding="utf-8")
            chown_to(target, item.owner)
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
                    raise LabError(f"node {name} init exited: {file_tail(base / 'init.log')}")
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
        chown_to(signal_file, "postgres")

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
