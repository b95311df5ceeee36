# ruff: noqa: ASYNC110  # polling other processes' state: there is no event to await
"""A fleet of app hosts in the app node: N extra pgcm-proxy + PgBouncer pairs.

Operators run pgcm-proxy beside PgBouncer on every application host, often a hundred
of them. :class:`Fleet` starts ``N`` such pairs inside the lab's app node (after
:func:`pgcm_lab.pgcm.start_pgcm`), each configured like the app node's own proxy but
with its own:

* proxy id ``app-<i>`` (ack key ``<namespace>/proxies/app-<i>``);
* directory ``/run/pgcm-fleet/app-<i>`` inside the node: ``pgcm.toml``,
  ``pgbouncer.ini.template`` (the app node's template, see
  :func:`pgcm_lab.pgcmconf.render_pgbouncer_template`), the ``pgbouncer.ini`` the proxy
  owns, PgBouncer's unix socket, log and pidfile, and the proxy's pidfile;
* PgBouncer on ``127.0.0.1:<7000 + i>`` (admin console on the unix socket).

The processes are stopped by PID (:meth:`Fleet.stop`), read from the pidfiles and
translated to host PIDs through the app node's PID namespace; ``Lab.down`` ends them
too, with every other process of the node. Memory is checked before anything starts:
a pair's memory is mostly the proxy's Python interpreter (docs/scale.md has the figures).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

import anyio

from pgcm_lab.errors import LabError
from pgcm_lab.lab import Lab
from pgcm_lab.pgcm import etcd_get_prefix, venv_script
from pgcm_lab.pgcmconf import NAMESPACE, render_pgbouncer_template, render_pgcm_toml
from pgcm_lab.topology import APP_NODE, Topology

__all__ = [
    "BASE_PORT",
    "BATCH",
    "FLEET_DIR",
    "PAIR_BUDGET_MB",
    "Fleet",
    "Member",
    "ProcessMemory",
    "available_mb",
    "member_pgbouncer_template",
    "member_toml",
    "parse_smaps_rollup",
    "required_mb",
    "set_keys",
    "spread",
]

FLEET_DIR: Final = "/run/pgcm-fleet"
BASE_PORT: Final = 7000
# Above a pair's measured share of memory (docs/scale.md), with room for growth.
PAIR_BUDGET_MB: Final = 70
# Left free for the lab itself and whatever else the machine runs.
RESERVE_MB: Final = 2048
BATCH: Final = 10
# App hosts are other machines in production: here they must not starve the cluster.
_NICE: Final = ("nice", "-n", "10")
_STOP_S: Final = 10.0
_POLL: Final = 0.2
# ``$$`` is the shell's PID, which ``exec`` hands to the proxy.
_WITH_PIDFILE: Final = 'echo $$ > "$0" && exec "$@"'


@final
@dataclass(frozen=True, slots=True)
class Member:
    """Pair ``index`` (1-based) of the fleet: where its files and ports are."""

    index: int

    @property
    def proxy_id(self) -> str:
        """The proxy's id and the name of its directory."""
        return f"app-{self.index}"

    @property
    def port(self) -> int:
        """PgBouncer's port on 127.0.0.1 and its unix socket's number."""
        return BASE_PORT + self.index

    @property
    def inner_dir(self) -> str:
        """The pair's directory inside the app node."""
        return f"{FLEET_DIR}/{self.proxy_id}"

    def inner(self, name: str) -> str:
        """The path of file ``name`` of this pair inside the app node."""
        return f"{self.inner_dir}/{name}"


@final
@dataclass(frozen=True, slots=True)
class ProcessMemory:
    """One process's resident and proportional set sizes (``smaps_rollup``), in kB."""

    rss_kb: int
    pss_kb: int


def set_keys(text: str, section: str, values: Mapping[str, str]) -> str:
    """Return ``text`` (INI or TOML) with each ``key = ...`` line of ``[section]`` replaced.

    ``values`` are written as given (quote TOML strings yourself).

    Raises:
        LabError: a key is not in that section (the template changed under us).
    """
    out: list[str] = []
    current = ""
    seen: set[str] = set()
    for line in text.splitlines(keepends=True):
        header = re.match(r"\s*\[([^\]]+)\]\s*$", line)
        if header:
            current = header.group(1).strip()
        key = line.split("=", 1)[0].strip() if "=" in line else ""
        if current == section and key in values and not line.lstrip().startswith((";", "#")):
            out.append(f"{key} = {values[key]}\n")
            seen.add(key)
        else:
            out.append(line)
    missing = sorted(set(values) - seen)
    if missing:
        raise LabError(f"[{section}] has no {', '.join(missing)}")
    return "".join(out)


def member_pgbouncer_template(topology: Topology, member: Member) -> str:
    """The app node's PgBouncer template with this pair's port, socket, log and pidfile."""
    return set_keys(
        render_pgbouncer_template(topology.app),
        "pgbouncer",
        {
            "listen_addr": "127.0.0.1",
            "listen_port": str(member.port),
            "unix_socket_dir": member.inner_dir,
            "logfile": member.inner("pgbouncer.log"),
            "pidfile": member.inner("pgbouncer.pid"),
        },
    )


def member_toml(topology: Topology, member: Member, proxy: Mapping[str, str] | None = None) -> str:
    """The app node's pgcm.toml, for this pair's proxy id, PgBouncer and files.

    ``proxy`` adds ``[proxy]`` keys (TOML values as written), e.g. a longer
    ``ack_lease_ttl`` for one pair.
    """
    text = render_pgcm_toml(topology, topology.app)
    if proxy:
        added = "".join(f"{key} = {value}\n" for key, value in proxy.items())
        text = text.replace("[proxy]\n", f"[proxy]\n{added}", 1)
    text = set_keys(
        text,
        "pgbouncer",
        {"host": json.dumps(member.inner_dir), "port": str(member.port)},
    )
    return set_keys(
        text,
        "proxy",
        {
            "pgbouncer_config_file": json.dumps(member.inner("pgbouncer.ini")),
            "pgbouncer_config_template_file": json.dumps(member.inner("pgbouncer.ini.template")),
            "proxy_id": json.dumps(member.proxy_id),
        },
    )


def parse_smaps_rollup(text: str) -> ProcessMemory:
    """Read ``Rss`` and ``Pss`` (kB) from a ``/proc/PID/smaps_rollup``.

    Raises:
        LabError: either line is missing.
    """
    found: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss") and rest.split():
            found[name] = int(rest.split()[0])
    if set(found) != {"Rss", "Pss"}:
        raise LabError(f"no Rss/Pss in smaps_rollup: {text[:200]!r}")
    return ProcessMemory(rss_kb=found["Rss"], pss_kb=found["Pss"])


def required_mb(size: int) -> int:
    """Free memory (MB) the check asks for before starting ``size`` pairs."""
    return size * PAIR_BUDGET_MB + RESERVE_MB


def available_mb(meminfo: str) -> int:
    """``MemAvailable`` from a ``/proc/meminfo`` text, in MB.

    Raises:
        LabError: the line is missing.
    """
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    raise LabError("no MemAvailable in /proc/meminfo")


def _ns_pid_map(lab: Lab) -> dict[int, int]:
    """``{pid inside the app node: host pid}`` for every process of the app node."""
    mapping: dict[int, int] = {}
    for host_pid, _ in lab.processes(APP_NODE):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
                if line.startswith("NSpid:"):
                    mapping[int(line.split()[-1])] = host_pid
    return mapping


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@final
class Fleet:
    """Start, measure, freeze and stop the extra proxy + PgBouncer pairs of a running lab."""

    def __init__(self, lab: Lab) -> None:
        """Drive the fleet of ``lab`` (its pairs are found on disk, so any object will do)."""
        self._lab = lab

    @property
    def host_dir(self) -> Path:
        """Where :data:`FLEET_DIR` lives on the host."""
        return self._lab.host_path(APP_NODE, FLEET_DIR)

    def members(self) -> list[Member]:
        """The pairs whose directories exist, in index order."""
        if not self.host_dir.is_dir():
            return []
        found = [
            int(p.name.removeprefix("app-"))
            for p in self.host_dir.iterdir()
            if p.name.startswith("app-") and p.name.removeprefix("app-").isdigit()
        ]
        return [Member(i) for i in sorted(found)]

    def _host(self, member: Member, name: str) -> Path:
        return self._lab.host_path(APP_NODE, member.inner(name))

    def check_memory(self, size: int, meminfo: str | None = None) -> int:
        """Return the free MB; refuse when ``size`` pairs would not fit.

        Raises:
            LabError: less than :func:`required_mb` is available.
        """
        text = meminfo if meminfo is not None else Path("/proc/meminfo").read_text()
        free = available_mb(text)
        if free < required_mb(size):
            raise LabError(
                f"{size} proxy + PgBouncer pairs need about {required_mb(size)} MB free "
                f"({PAIR_BUDGET_MB} MB each + {RESERVE_MB} MB reserve); {free} MB available"
            )
        return free

    async def start(
        self,
        size: int,
        primary_address: str,
        proxy_settings: Mapping[int, Mapping[str, str]] | None = None,
    ) -> None:
        """Start ``size`` pairs and wait until every proxy acknowledged ``primary_address``.

        The pairs start :data:`BATCH` at a time, each batch once the previous one has
        acknowledged, and run at nice 10. The lab puts a hundred app hosts and the whole
        cluster on one machine: a hundred Python interpreters starting at once on two
        cores kept PAF's monitor of the primary from finishing within its 10 s timeout,
        and Pacemaker fenced the primary. The caller bounds the wait (minutes for 100).
        ``proxy_settings`` maps a pair's index to extra ``[proxy]`` keys (see
        :func:`member_toml`).

        Raises:
            LabError: a fleet exists already, memory is short or a process did not start.
        """
        if self.members():
            raise LabError(f"a fleet of {len(self.members())} pairs exists: stop it first")
        free = self.check_memory(size)
        self._lab.progress(f"fleet: starting {size} proxy + PgBouncer pairs ({free} MB free)")
        proxy = venv_script("pgcm-proxy")
        members = [Member(i) for i in range(1, size + 1)]
        for first in range(0, size, BATCH):
            batch = members[first : first + BATCH]
            for member in batch:
                extra = (proxy_settings or {}).get(member.index)
                self._write_files(member, primary_address, extra)
                await self._lab.spawn(
                    APP_NODE,
                    [*_NICE, "pgbouncer", member.inner("pgbouncer.ini")],
                    f"services/fleet/{member.proxy_id}-pgbouncer.out",
                    user="postgres",
                )
                argv = [*_NICE, "sh", "-c", _WITH_PIDFILE, member.inner("proxy.pid"), proxy,
                        "run", "--config-file", member.inner("pgcm.toml")]  # fmt: skip
                await self._lab.spawn(APP_NODE, argv, f"services/fleet/{member.proxy_id}-proxy.log")
            await self.wait_acked(primary_address, batch)
        self._lab.progress(f"fleet: {size} proxies acknowledged {primary_address}")

    def _write_files(
        self, member: Member, primary_address: str, proxy: Mapping[str, str] | None
    ) -> None:
        directory = self._host(member, "")
        directory.mkdir(parents=True, exist_ok=True)
        shutil.chown(directory, "postgres", "postgres")
        topology = self._lab.topology
        config = self._host(member, "pgcm.toml")
        config.write_text(member_toml(topology, member, proxy), encoding="utf-8")
        config.chmod(0o600)  # holds the lab's token, as the node's own pgcm.toml
        template = member_pgbouncer_template(topology, member)
        for name, text in (
            ("pgbouncer.ini.template", template),
            # Valid from the start: PgBouncer runs before its proxy rewrites the file.
            ("pgbouncer.ini", template.replace("{{.Host}}", primary_address)),
        ):
            path = self._host(member, name)
            path.write_text(text, encoding="utf-8")
            shutil.chown(path, "postgres", "postgres")
            path.chmod(0o640)

    async def wait_acked(self, address: str, members: Sequence[Member] | None = None) -> None:
        """Wait (caller bounds it) until every member's proxy acknowledged ``address``."""
        wanted = {m.proxy_id for m in (members if members is not None else self.members())}
        while True:
            with contextlib.suppress(LabError):
                acks = await self.acks()
                if all(p in acks and json.loads(acks[p]).get("host") == address for p in wanted):
                    return
            await anyio.sleep(1.0)

    async def acks(self) -> dict[str, str]:
        """``{proxy id: ack JSON}`` of every proxy (the fleet's and the lab's own)."""
        prefix = f"{NAMESPACE}/proxies/"
        raw = await etcd_get_prefix(self._lab, prefix)
        return {key.removeprefix(prefix): value for key, value in raw.items()}

    def pids(self) -> dict[str, tuple[int | None, int | None]]:
        """``{proxy id: (proxy host PID, PgBouncer host PID)}``; ``None`` where not running.

        Read from the pairs' pidfiles (PIDs inside the app node) and checked against the
        process's command line, so a reused PID is never taken for one of ours.
        """
        try:
            mapping = _ns_pid_map(self._lab)
        except LabError:
            return {m.proxy_id: (None, None) for m in self.members()}
        found: dict[str, tuple[int | None, int | None]] = {}
        for member in self.members():
            pair: list[int | None] = []
            for pidfile in ("proxy.pid", "pgbouncer.pid"):
                host_pid: int | None = None
                with contextlib.suppress(OSError, ValueError):
                    inner = int(self._host(member, pidfile).read_text().strip())
                    candidate = mapping.get(inner)
                    # The directory with its slash: app-1 must not match app-10's files.
                    if candidate is not None and f"{member.inner_dir}/" in _cmdline(candidate):
                        host_pid = candidate
                pair.append(host_pid)
            found[member.proxy_id] = (pair[0], pair[1])
        return found

    def memory(self) -> dict[str, ProcessMemory]:
        """``{"<proxy id>/proxy" or "<proxy id>/pgbouncer": memory}`` of the live processes."""
        out: dict[str, ProcessMemory] = {}
        for proxy_id, pair in self.pids().items():
            for kind, pid in zip(("proxy", "pgbouncer"), pair, strict=True):
                if pid is None:
                    continue
                with contextlib.suppress(OSError, LabError):
                    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
                    out[f"{proxy_id}/{kind}"] = parse_smaps_rollup(rollup)
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the live pairs have used so far (``/proc/PID/stat``)."""
        ticks = 0
        for pair in self.pids().values():
            for pid in pair:
                if pid is None:
                    continue
                with contextlib.suppress(OSError, IndexError, ValueError):
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    # utime and stime: fields 14 and 15 of stat(5), 12 and 13 after the name.
                    ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def freeze(self, proxy_id: str) -> int:
        """SIGSTOP the proxy ``proxy_id``; return its host PID.

        Raises:
            LabError: that proxy is not running.
        """
        pid = self.pids().get(proxy_id, (None, None))[0]
        if pid is None:
            raise LabError(f"proxy {proxy_id} is not running")
        os.kill(pid, signal.SIGSTOP)
        self._lab.progress(f"fleet: SIGSTOP proxy {proxy_id} (pid {pid})")
        return pid

    def thaw(self, proxy_id: str) -> None:
        """SIGCONT the proxy ``proxy_id`` (undo :meth:`freeze`)."""
        pid = self.pids().get(proxy_id, (None, None))[0]
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
            self._lab.progress(f"fleet: SIGCONT proxy {proxy_id} (pid {pid})")

    async def stop(self) -> int:
        """Stop every pair by PID (proxies first: a clean exit revokes its ack); return count.

        SIGTERM (and SIGCONT, for a frozen one), then SIGKILL after 10 s. The app node's
        init reaps them. The pairs' directories are removed afterwards.
        """
        pids = self.pids()
        stopped = 0
        for index in (0, 1):
            victims = [pair[index] for pair in pids.values() if pair[index] is not None]
            stopped += await _terminate([p for p in victims if p is not None])
        if self.host_dir.is_dir():
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(self.host_dir))
        if pids:
            self._lab.progress(f"fleet: stopped {stopped} processes of {len(pids)} pairs")
        return stopped


async def _terminate(pids: Sequence[int]) -> int:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)
    with anyio.move_on_after(_STOP_S):
        while any(_alive(p) for p in pids):
            await anyio.sleep(_POLL)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with anyio.move_on_after(_STOP_S):
        while any(_alive(p) for p in pids):
            await anyio.sleep(_POLL)
    return len(pids)


def spread(values: Sequence[float]) -> dict[str, float]:
    """First, median, nearest-rank p99 and last of ``values`` (which must not be empty)."""
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, max(0, -(-99 * len(ordered) // 100) - 1))]
    return {
        "first": ordered[0],
        "median": statistics.median(ordered),
        "p99": p99,
        "last": ordered[-1],
    }
