# ruff: noqa: ASYNC110  # we poll other processes' state: there is no event to await
"""Tearing the lab down: every node's init killed by PID, namespaces and mounts removed."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

from pgcm_lab.labcore import (
    PREFIX,
    LabCore,
    alive,
    cmdline_has,
    lab_netns,
    reap,
    require_root,
)
from pgcm_lab.labhealth import LabHealth

__all__ = ["LabTeardown", "lab_leftovers", "node_pids"]


class LabTeardown(LabHealth):
    """End the lab and find what it left behind."""

    async def down(self, *, quiet: bool = False) -> float:
        """Remove everything the lab made; safe to run at any time, any number of times."""
        require_root()
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
            if cmdline_has(pid, "pgcm_lab.fenced"):
                await self._kill_pid(pid)
            reap(pid)
        for unshare in pids.glob("*.unshare") if pids.is_dir() else []:
            with contextlib.suppress(ValueError, OSError):
                pid = int(unshare.read_text().strip())
                # Only our own unshare: a stale file may name a PID reused since.
                if cmdline_has(pid, "pgcm_lab.init"):
                    await self._kill_pid(pid)
                reap(pid)
        for name in list(self._children):
            await self._reap_unshare(name)
        for ns in lab_netns():
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
        if not alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        with anyio.fail_after(10):
            while alive(pid):
                reap(pid)
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
                while alive(pid):
                    reap(pid)
                    await anyio.sleep(0.01)
            path.unlink()


def node_pids(lab: LabCore) -> list[int]:
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


def lab_leftovers(lab: LabCore, pids: Sequence[int] = ()) -> list[str]:
    """What a lab left behind: namespaces, live processes, mounts (empty when clean)."""
    left = [f"netns {ns}" for ns in lab_netns()]
    left += [f"process {pid}" for pid in pids if alive(pid)]
    left += [f"node {name} running" for name in lab.running_nodes()]
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    left += [f"mount {line.split()[4]}" for line in mounts
             if f"{PREFIX}-" in line or str(lab.state_dir) in line]  # fmt: skip
    return left
