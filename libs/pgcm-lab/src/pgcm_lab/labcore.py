# we poll other processes' state: there is no event to await
"""The lab's core: its state files, node paths, and commands run inside its nodes.

Every node is a network namespace ``pgcmlab-nK`` (plus ``pgcmlab-app``) joined to a bridge
in its own namespace ``pgcmlab-br``, and a mount/UTS/PID namespace whose PID 1 is
:mod:`pgcm_lab.init`. The layers above add health (:mod:`pgcm_lab.labhealth`), tear-down
(:mod:`pgcm_lab.labdown`), start-up (:mod:`pgcm_lab.labstart`), faults
(:mod:`pgcm_lab.labfaults`) and rejoining (:class:`pgcm_lab.lab.Lab`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final, final

import anyio

from pgcm_lab.errors import CommandFailed, LabError, LabNotUp
from pgcm_lab.topology import Node, Topology

__all__ = [
    "BRIDGE_NS",
    "DEFAULT_STATE_DIR",
    "POLL",
    "PREFIX",
    "LabCore",
    "Progress",
    "Service",
    "SwitchoverResult",
    "alive",
    "chown_to",
    "cmdline_has",
    "file_tail",
    "lab_netns",
    "quote",
    "reap",
    "require_root",
]

DEFAULT_STATE_DIR: Final = Path("/var/tmp/pgcm-lab")  # noqa: S108  # survives reboots of /tmp
PREFIX: Final = "pgcmlab"
BRIDGE_NS: Final = f"{PREFIX}-br"
POLL: Final = 0.2

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


class LabCore:
    """Drive one lab whose state lives in ``state_dir``: files, paths and commands.

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
        agent = saved.get("agent", "pgsqlms")
        self.topology = topology or Topology(
            size=size if isinstance(size, int) else 3,
            agent=agent if isinstance(agent, str) else "pgsqlms",
        )
        services = saved.get("services", [])
        self.services = [
            Service.from_dict(s) for s in (services if isinstance(services, list) else [])
        ]
        # unshare processes started by this object: kept so they are waited for, not leaked.
        self._children: dict[str, subprocess.Popen[bytes]] = {}

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
        state = {
            "size": self.topology.size,
            "agent": self.topology.agent,
            "services": [s.as_dict() for s in self.services],
        }
        self._state_file.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

    @property
    def clone(self) -> str:
        """The promotable clone's id (PAF's or the legacy agent's)."""
        return self.topology.clone

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
        return pid if alive(pid) and cmdline_has(pid, "pgcm_lab.init") else None

    def running_nodes(self) -> list[str]:
        """Names of the nodes whose init is alive."""
        return [n.name for n in self.topology.all_nodes if self.init_pid(n.name) is not None]

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
            raise CommandFailed(full, result.returncode, file_tail(log_path))


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: only its parent's wait() is missing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # A zombie has exited: only its parent's wait() is missing.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline_has(pid: int, marker: str) -> bool:
    """Whether ``pid``'s command line contains ``marker``."""
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child and has exited."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def lab_netns() -> list[str]:
    """The lab's network namespaces that exist now."""
    netns = Path("/run/netns")
    if not netns.is_dir():
        return []
    return sorted(p.name for p in netns.iterdir() if p.name.startswith(f"{PREFIX}-"))


def chown_to(path: Path, user: str) -> None:
    """Give ``path`` to ``user`` and that user's primary group."""
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def file_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of ``path`` ("" when it does not exist)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def require_root() -> None:
    """Raise :class:`LabError` unless running as root."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network, mount and PID namespaces)")


def quote(argv: Sequence[str]) -> str:
    """``argv`` as a shell line (for messages)."""
    return shlex.join(argv)
