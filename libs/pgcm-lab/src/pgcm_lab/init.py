"""PID 1 of a lab node: set up its private mounts, signal readiness, reap orphans.

Run by the lab as ``ip netns exec pgcmlab-nK unshare --mount --uts --pid --fork
--mount-proc python -m pgcm_lab.init SPEC.json``. Daemons are started later with
``nsenter``; when they daemonize they are re-parented to this process, which reaps
them. Killing this process (SIGKILL, by PID) ends every process in the node.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import sys
from pathlib import Path

__all__ = ["main"]

# Directories below the node's private /run that the daemons expect, with owners/modes.
_RUN_DIRS = (
    ("crm", "hacluster", 0o750),
    ("postgresql", "postgres", 0o2775),
    ("pgbouncer", "postgres", 0o755),
    ("resource-agents", "root", 0o755),
    ("lock", "root", 0o755),
    ("corosync", "root", 0o755),
    ("pgcm", "root", 0o755),
)


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def setup(spec: dict[str, object]) -> None:
    """Make the mounts private, set the host name and bind the node's directories."""
    _mount("--make-rprivate", "/")
    socket.sethostname(str(spec["hostname"]))
    mounts = spec["mounts"]
    assert isinstance(mounts, list)  # noqa: S101  # the lab wrote this file
    for source, target in mounts:
        _mount("--bind", source, target)
    overlays = spec.get("overlays", [])
    assert isinstance(overlays, list)  # noqa: S101  # the lab wrote this file
    for extra, target in overlays:
        # Read-only: the lab's files on top of the host's, seen in this node only.
        _mount("-t", "overlay", "overlay", "-o", f"lowerdir={extra}:{target}", target)
    # libqb names its shared-memory files by PID and PIDs repeat across PID namespaces.
    _mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", "/dev/shm")  # noqa: S108  # a mount point
    for name, owner, mode in _RUN_DIRS:
        path = Path("/run") / name
        path.mkdir(exist_ok=True)
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        path.chmod(mode)


def reap_forever() -> None:
    """Reap every child, forever; SIGCHLD stays blocked so none is missed."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    while True:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        signal.sigwait({signal.SIGCHLD})


def main() -> int:
    """Entry point: ``python -m pgcm_lab.init SPEC.json``."""
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    setup(spec)
    Path("/run/pgcm/ready").write_text("ready\n", encoding="utf-8")
    sys.stdout.flush()
    reap_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
