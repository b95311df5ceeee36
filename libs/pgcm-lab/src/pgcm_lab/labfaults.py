# ruff: noqa: ASYNC110  # we poll other processes' state: there is no event to await
"""Faults and moves: kill, hang, partition, heal, switch over, load the lab."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from signal import SIGCONT, SIGSTOP

import anyio

from pgcm_lab.errors import LabError, LabNotUp
from pgcm_lab.labcore import (
    BRIDGE_NS,
    POLL,
    SwitchoverResult,
)
from pgcm_lab.labstart import LabStart
from pgcm_lab.load import LoadReport, max_latency_ms, parse_pgbench
from pgcm_lab.render import (
    node_files,
)
from pgcm_lab.topology import APP_NODE

__all__ = ["LabFaults"]


class LabFaults(LabStart):
    """Break the lab in the ways the fault suite needs, move the primary, load it."""

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
        await self.exec(target, ["crm_resource", "--resource", self.clone, "--move", "--promoted",
                                 "--node", target])  # fmt: skip
        with anyio.fail_after(60):
            while await self.psql(target, "select pg_is_in_recovery()", check=False) != "f":
                await anyio.sleep(0.1)
            writable = time.monotonic() - t0
            self.progress(f"{target} accepts writes after {writable:.2f}s")
            if repoint:
                await self.point_bouncers(target)
            while not (await self.view(target)).settled_on(target):
                await anyio.sleep(POLL)
            settled = time.monotonic() - t0
        await self.exec(target, ["crm_resource", "--resource", self.clone, "--clear"])
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

    async def pgbench_clients(self) -> int:
        """How many pgbench clients the app node's PgBouncer has now (``SHOW CLIENTS``)."""
        argv = ["psql", "-X", "-h", "/run/pgbouncer", "-p", "6432", "-U", "postgres", "-d",
                "pgbouncer", "-qAt", "-c", "SHOW CLIENTS"]  # fmt: skip
        out = await self.exec(APP_NODE, argv, user="postgres")
        return sum(1 for line in out.stdout.splitlines() if "pgbench" in line.split("|"))

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


def _max_latency_in(logs: Path) -> float | None:
    values = []
    for log in logs.glob("pgbench*"):
        with log.open(encoding="utf-8", errors="replace") as handle:
            value = max_latency_ms(handle)
        if value is not None:
            values.append(value)
    return max(values) if values else None
