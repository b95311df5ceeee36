"""A real systemd 252 as PID 1 of a fresh PID namespace, to run the shipped units under.

The test machine's PID 1 is not systemd, but systemd runs as PID 1 of a new PID, mount,
cgroup and UTS namespace (``unshare``). By default it shares the host's network
namespace, so the units reach etcd and PgBouncer started by the test kit on loopback.
With ``enter`` (an ``nsenter`` prefix) those namespaces are created inside another
network, mount and PID namespace instead: the supervise test boots systemd inside the
test kit's Pacemaker node, whose libqb IPC (abstract sockets, a private ``/dev/shm``,
PIDs the daemons can see) ``crm_mon`` needs.

Confinement, because systemd as PID 1 assumes it owns the machine:

* cgroups: the launcher first moves itself into a fresh child cgroup of its own cgroup
  in *every* hierarchy, then unshares the cgroup namespace, so that cgroup is systemd's
  root. The host's cgroup mounts are rooted at the host's root cgroup (systemd would
  create ``init.scope`` there), so ``run.sh`` replaces ``/sys/fs/cgroup`` in the private
  mount namespace with a tmpfs holding fresh mounts of the same hierarchies (a cgroupfs
  mounted inside a cgroup namespace is rooted at the namespace's root). Controllers the
  host leaves unmounted get a read-only placeholder, or systemd would bind them to new,
  machine-wide v1 hierarchies. Teardown removes every cgroup directory depth-first.
* mounts: everything (``/run`` tmpfs, cgroup mounts, bind mounts over ``/etc/pgbouncer``,
  the read-only overlays that add the installed packages to ``/usr``, ``/lib`` and
  ``/etc``) lives in systemd's private mount namespace and vanishes with it.

The units run as the Debian packages install them: the .debs are built (or taken from
``PGCM_DEBS``) and unpacked with ``dpkg-deb -x``; that tree is laid over ``/`` inside
systemd's mount namespace only, so ``/usr/bin/pgcm-*``, ``/usr/lib/pgcm-*`` and the
unit files are the packaged ones and nothing of the checkout is read (a checkout under
/root, /home or /tmp is fine: ``ProtectHome=``/``PrivateTmp=`` hide nothing the units
need).
* sysctls: systemd as PID 1 raises a few global knobs (``net.unix.max_dgram_qlen`` in the
  shared network namespace, ``fs.file-max``, ``fs.nr_open``) and sets ``core_pattern``;
  teardown writes back any value that changed.
* processes: systemd ignores SIGTERM as PID 1; teardown SIGKILLs it by its host PID,
  which makes the kernel kill everything else in its PID namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol, final

import pytest

from pgcm_testkit.process import ServerProcess, wait_until

SYSTEMD: Final = Path("/lib/systemd/systemd")
REPO_ROOT: Final = Path(__file__).resolve().parents[2]
_CGROUP_MOUNTS: Final = Path("/sys/fs/cgroup")
# systemd 252 mounts these v1 controllers together (mount-setup.c's join list).
_JOINED: Final = (("cpu", "cpuacct"), ("net_cls", "net_prio"))
# Global (or host network namespace) knobs systemd as PID 1 writes; restored on teardown.
_SYSCTLS: Final = (
    "kernel/core_pattern",
    "fs/file-max",
    "fs/nr_open",
    "net/unix/max_dgram_qlen",
)
_READY_DEADLINE_S: Final = 20
_SYSTEMCTL_TIMEOUT_S: Final = 30
_TARGET: Final = "pgcm-test.target"
UNIT_DIR: Final = Path("/run/systemd/system")  # the only unit directory systemd is given
# Empty stand-ins for what units' default dependencies name (Requires=sysinit.target,
# After=basic.target, ...): without the host's unit files these must exist, and empty.
_STUB_UNITS: Final = (
    "sysinit.target",
    "basic.target",
    "network-online.target",
    "shutdown.target",
    "system.slice",
)


@pytest.fixture(scope="session")
def installed_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return the three packages unpacked into one tree (built unless PGCM_DEBS names them)."""
    from tests.deb.conftest import build_debs  # noqa: PLC0415 - the one builder of the .debs

    given = os.environ.get("PGCM_DEBS")
    debs = Path(given) if given else tmp_path_factory.mktemp("systemd-debs")
    if not given:
        build_debs(debs, "1")
    return packaged_tree(debs, tmp_path_factory.mktemp("installed"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip this directory's tests, with the reason, where systemd cannot run as PID 1."""
    reason = _unsupported_reason()
    if reason is None:
        return
    marker = pytest.mark.skip(reason=reason)
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(marker)


def _unsupported_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: systemd runs as PID 1 of new PID/mount/cgroup namespaces"
    if not SYSTEMD.exists():
        return f"{SYSTEMD} is not installed"
    for tool in ("unshare", "nsenter", "systemctl"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux/systemd) not on PATH"
    if not (_CGROUP_MOUNTS / "systemd").is_dir() and not (_CGROUP_MOUNTS / "cgroup.procs").exists():
        return "no cgroup hierarchy mounted under /sys/fs/cgroup"
    return None


@final
@dataclass(frozen=True, slots=True)
class CgroupHierarchy:
    """One mounted cgroup hierarchy, and this process's cgroup in it."""

    directory: str  # the name under /sys/fs/cgroup
    fstype: str  # cgroup or cgroup2
    options: str  # the mount options that select the hierarchy (controllers, name=)
    own_path: str  # this process's cgroup, from /proc/self/cgroup

    def child(self, name: str) -> Path:
        """Return the host path of a child ``name`` of this process's cgroup."""
        return _CGROUP_MOUNTS / self.directory / self.own_path.lstrip("/") / name


def _controllers() -> dict[str, int]:
    """Return enabled kernel controllers and their hierarchy id (0: not mounted as v1)."""
    out: dict[str, int] = {}
    for line in Path("/proc/cgroups").read_text().splitlines()[1:]:
        name, hierarchy, _count, enabled = line.split()
        if enabled == "1":
            out[name] = int(hierarchy)
    return out


def cgroup_hierarchies() -> list[CgroupHierarchy]:
    """Return the cgroup hierarchies mounted under /sys/fs/cgroup, with our cgroup in each."""
    known = _controllers()
    own: dict[frozenset[str], str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _id, names, path = line.split(":", 2)
        own[frozenset(names.split(",")) if names else frozenset()] = path
    hierarchies = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, right = line.split(" - ", 1)
        mount_point = Path(left.split()[4])
        fstype, _source, super_options = right.split()[:3]
        if fstype not in {"cgroup", "cgroup2"} or mount_point.parent != _CGROUP_MOUNTS:
            continue
        selectors = frozenset(
            opt for opt in super_options.split(",") if opt in known or opt.startswith("name=")
        )
        if selectors not in own:
            continue
        options = ",".join(sorted(selectors)) if fstype == "cgroup" else ""
        if fstype == "cgroup" and not any(opt in known for opt in selectors):
            options = f"none,{options}"  # a named hierarchy without controllers
        hierarchies.append(CgroupHierarchy(mount_point.name, fstype, options, own[selectors]))
    return hierarchies


def _placeholders(hierarchies: Sequence[CgroupHierarchy]) -> list[str]:
    """Return the /sys/fs/cgroup names systemd would mount but the host does not have."""
    mounted = {h.directory for h in hierarchies}
    wanted = set()
    for controller in _controllers():
        group = next((g for g in _JOINED if controller in g), (controller,))
        wanted.add(",".join(group))
    return sorted(wanted - mounted)


def _read_sysctls() -> dict[str, str]:
    values = {}
    for name in _SYSCTLS:
        with contextlib.suppress(OSError):
            values[name] = (Path("/proc/sys") / name).read_text()
    return values


def _restore_sysctls(before: Mapping[str, str]) -> None:
    for name, value in before.items():
        path = Path("/proc/sys") / name
        with contextlib.suppress(OSError):
            if path.read_text() != value:
                path.write_text(value)


def _remove_cgroup_tree(top: Path) -> None:
    """Remove ``top`` and every cgroup below it, deepest first (cgroup dirs need rmdir)."""
    if not top.exists():
        return
    dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts))
    for directory in (*reversed(dirs), top):

        def removed(directory: Path = directory) -> bool:
            try:
                directory.rmdir()
            except FileNotFoundError:
                return True
            except OSError:
                return False  # EBUSY while the kernel finishes tearing down dead tasks
            return True

        wait_until(removed, deadline_s=10, what=f"rmdir {directory}")


def _shell_quote(value: str | Path) -> str:
    return "'" + str(value).replace("'", "'\\''") + "'"


@final
@dataclass(frozen=True, slots=True)
class BindMount:
    """A host directory bind-mounted over ``target`` inside systemd's mount namespace."""

    source: Path
    target: Path


@final
@dataclass(frozen=True, slots=True)
class Overlay:
    """``layer`` laid read-only over the host's ``target`` inside systemd's mount namespace."""

    layer: Path
    target: Path


def packaged_tree(debs: Path, dest: Path) -> Path:
    """Unpack every .deb in ``debs`` into ``dest`` (as dpkg would lay them out); return it.

    The bytecode is compiled as the postinst does (plain and optimized), with the
    installed paths recorded in it.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True, timeout=120)
        name = deb.name.split("_", 1)[0]
        lib = dest / "usr" / "lib" / name / "lib"
        subprocess.run(
            ["/usr/bin/python3", "-m", "compileall", "-q", "-o", "0", "-o", "2",
             "-s", str(dest), "-p", "/", str(lib)],
            check=True, timeout=300, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return dest


def packages_overlays(tree: Path, etc_layer: Path) -> list[Overlay]:
    """Return the overlays that make ``tree`` (unpacked packages) and ``etc_layer`` appear."""
    return [
        Overlay(tree / "usr", Path("/usr")),
        Overlay(tree / "lib", Path("/lib")),
        Overlay(etc_layer, Path("/etc")),
    ]


@final
@dataclass
class NamespacedSystemd:
    """systemd running as PID 1 of its own namespaces; driven with ``systemctl`` via nsenter."""

    base: Path
    launcher: ServerProcess
    pid: int = 0  # systemd's PID as the host sees it
    cgroups: list[Path] = field(default_factory=list)

    def root_path(self, path: str | Path) -> Path:
        """Return the host path of ``path`` as systemd's mount namespace sees it."""
        return Path(f"/proc/{self.pid}/root") / Path(path).relative_to("/")

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``systemctl ARGS`` against this systemd; raise with its output on failure."""
        argv = ["nsenter", "-t", str(self.pid), "-m", "-p", "--", "systemctl", "--no-pager", *args]
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=_SYSTEMCTL_TIMEOUT_S, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"systemctl {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\n{self.log_tail()}"
            )
        return result

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """Return ``systemctl show`` properties of ``unit``."""
        out = self.systemctl("show", unit, *(f"--property={p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def log_tail(self, lines: int = 40) -> str:
        """Return the end of systemd's own log (its console output) and the launcher's."""
        console = self.base / "systemd.log"
        text = console.read_text(errors="replace") if console.exists() else ""
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} lines of {console} ---\n{tail}\n{self.launcher.log_tail(10)}"

    def _find_pid(self) -> bool:
        # The launcher's only descendant chain: [nsenter ->] sh/unshare -> systemd.
        pid = self.launcher.pid
        for _depth in range(4):
            with contextlib.suppress(OSError):
                pids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                if not pids:
                    return False
                pid = int(pids[0])
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    self.pid = pid
                    return True
        return False

    def _booted(self) -> bool:
        if not self.root_path("/run/systemd/private").exists():
            return False
        state = self.systemctl("is-system-running", check=False).stdout.strip()
        return state in {"running", "degraded"}

    def wait_booted(self) -> None:
        """Wait until systemd runs (its PID known) and has reached its start-up target."""
        self.launcher.wait_ready(self._find_pid, deadline_s=_READY_DEADLINE_S)
        self.launcher.wait_ready(self._booted, deadline_s=_READY_DEADLINE_S)

    def host_pids(self, unit: str) -> list[int]:
        """Return the host PIDs in ``unit``'s cgroup (systemd reports namespace PIDs)."""
        unified = next(d for d in self.cgroups if d.is_relative_to(_CGROUP_MOUNTS / "unified"))
        procs = unified / "system.slice" / unit / "cgroup.procs"
        return [int(pid) for pid in procs.read_text().split()] if procs.exists() else []

    def check_confined(self) -> None:
        """Fail unless systemd loads units only from the test's directory, and runs none.

        A systemd that found the host's units would run sysinit.target's services
        against the host's file systems. Checked before any test unit starts.
        """
        unit_path = self.systemctl("show", "--property=UnitPath", "--value").stdout.split()
        outside = [p for p in unit_path if not Path(p).is_relative_to("/run/systemd")]
        if outside:
            raise RuntimeError(f"systemd would load units from {outside}: not confined")
        services = self.systemctl(
            "list-units", "--all", "--plain", "--no-legend", "--type=service"
        ).stdout.split()
        if any(word.endswith(".service") for word in services):
            raise RuntimeError(f"systemd loaded services before the test: {services}")

    def kill(self) -> None:
        """SIGKILL systemd by its host PID (PID 1 ignores SIGTERM); reap the launcher."""
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.launcher.stop(grace_s=10)  # unshare exits once its child (systemd) is gone
        if self.pid:
            pid = self.pid
            wait_until(
                lambda: not Path(f"/proc/{pid}").exists(), deadline_s=10, what="systemd to exit"
            )


def _run_script(units: Path, binds: Sequence[BindMount], placeholders: Sequence[str],
                hierarchies: Sequence[CgroupHierarchy], console_log: Path, *,
                overlays: Sequence[Overlay] = ()) -> str:  # fmt: skip
    lines = [
        "#!/bin/sh",
        "set -eu",
        "mount --make-rprivate /",
    ]
    for overlay in overlays:
        # Two lower layers and no upper one: a read-only union, host below, layer on top.
        target = _shell_quote(overlay.target)
        lines.append(
            f"mount -t overlay -o ro,lowerdir={_shell_quote(overlay.layer)}:{target} "
            f"pgcm-packages {target}"
        )
    lines += [
        # The inherited cgroup mounts show the host's root cgroup: replace them with
        # mounts made inside our cgroup namespace, rooted at our own cgroup.
        "if mountpoint -q /sys/fs/cgroup; then umount -R /sys/fs/cgroup; fi",
        "mount -t tmpfs -o mode=0755,size=1m pgcm-cgroup /sys/fs/cgroup",
    ]
    for h in hierarchies:
        target = _shell_quote(_CGROUP_MOUNTS / h.directory)
        options = f"-o {h.options} " if h.options else ""
        lines += [f"mkdir {target}", f"mount -t {h.fstype} {options}{h.fstype} {target}"]
    for name in placeholders:
        target = _shell_quote(_CGROUP_MOUNTS / name)
        lines += [f"mkdir {target}", f"mount -t tmpfs -o ro,size=4k pgcm-placeholder {target}"]
    lines += [
        "mount -t tmpfs -o mode=0755 pgcm-run /run",
        f"mkdir -p {UNIT_DIR}",
        "mkdir -p /run/systemd/system-generators /run/systemd/system-environment-generators",
        f"cp -R {_shell_quote(units)}/. {UNIT_DIR}/",
        # Generators write units from host config (sysv scripts, fstab, getty): mask them
        # all (a same-named entry in /run shadows /lib), so no host unit can be loaded.
        "for d in system-generators system-environment-generators; do",
        "  for g in /lib/systemd/$d/* /usr/lib/systemd/$d/* /etc/systemd/$d/*; do",
        '    [ -e "$g" ] && ln -sf /dev/null "/run/systemd/$d/${g##*/}"',
        "  done",
        "done",
    ]
    for bind in binds:
        if bind.target.is_relative_to("/run"):
            lines.append(f"mkdir -p {_shell_quote(bind.target)}")
        lines.append(f"mount --bind {_shell_quote(bind.source)} {_shell_quote(bind.target)}")
    lines += [
        # systemd as PID 1 in a container logs to /dev/console, which is the machine's
        # console: point it at a file instead.
        f": > {_shell_quote(console_log)}",
        f"mount --bind {_shell_quote(console_log)} /dev/console",
        "export container=pgcmtest",
        # Only our units: the host's /lib/systemd/system would let sysinit.target pull in
        # systemd-tmpfiles-setup (which empties the host's /tmp), sysusers, utmp, ...
        f"export SYSTEMD_UNIT_PATH={UNIT_DIR}",
        f"exec {SYSTEMD} --unit={_TARGET} --log-target=console --show-status=no",
    ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def start_namespaced_systemd(
    base: Path,
    units: Path,
    binds: Sequence[BindMount] = (),
    *,
    enter: Sequence[str] = (),
    overlays: Sequence[Overlay] = (),
) -> Iterator[NamespacedSystemd]:
    """Boot systemd as PID 1 of new namespaces with the unit files in ``units``.

    ``units`` is copied to ``/run/systemd/system`` (drop-ins included); ``binds`` are
    mounted before systemd starts, after the read-only ``overlays``. ``enter`` is an argv
    prefix (``nsenter ...``) that
    puts the launcher into other namespaces first, e.g. a Pacemaker test node's network,
    mount and PID namespaces: systemd's own namespaces are then created inside those.
    Everything is torn down on exit, also on failure: systemd killed, cgroups removed,
    changed sysctls restored.
    """
    base.mkdir(parents=True, exist_ok=True)
    (units / _TARGET).write_text("[Unit]\nDescription=pgcm unit tests\n")
    for stub in _STUB_UNITS:
        if not (units / stub).exists():
            (units / stub).write_text(f"[Unit]\nDescription=empty stand-in for {stub}\n")
    hierarchies = cgroup_hierarchies()
    token = f"pgcm-systemd-test-{os.getpid()}-{secrets.token_hex(3)}"
    run_sh, launch_sh = base / "run.sh", base / "launch.sh"
    run_sh.write_text(
        _run_script(
            units,
            binds,
            _placeholders(hierarchies),
            hierarchies,
            base / "systemd.log",
            overlays=overlays,
        )
    )
    procs = [h.child(token) / "cgroup.procs" for h in hierarchies]
    launch_sh.write_text(
        "#!/bin/sh\nset -eu\n"
        + "".join(f"echo $$ > {_shell_quote(p)}\n" for p in procs)
        # Into the cgroup first: a network namespace entered by ``ip netns exec`` comes
        # with its own sysfs, which has no cgroup mounts below it.
        + "exec "
        + "".join(f"{_shell_quote(word)} " for word in enter)
        + "unshare --pid --fork --kill-child=SIGKILL --mount --mount-proc --cgroup --uts "
        + f"/bin/sh {_shell_quote(run_sh)}\n"
    )
    sysctls = _read_sysctls()
    systemd = NamespacedSystemd(
        base=base,
        launcher=ServerProcess(
            name="systemd", argv=["/bin/sh", str(launch_sh)], log_path=base / "launcher.log",
            stop_signal=signal.SIGKILL,
        ),
    )  # fmt: skip
    try:
        for hierarchy in hierarchies:
            directory = hierarchy.child(token)
            directory.mkdir()
            systemd.cgroups.append(directory)
            if hierarchy.directory == "cpuset":
                # A new v1 cpuset cgroup has no CPUs or memory nodes: nothing could join it.
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    (directory / knob).write_text((directory.parent / knob).read_text())
        systemd.launcher.start()
        systemd.wait_booted()
        systemd.check_confined()
        yield systemd
    finally:
        try:
            systemd.kill()
        finally:
            for directory in systemd.cgroups:
                _remove_cgroup_tree(directory)
            _restore_sysctls(sysctls)


class UnitWorld(Protocol):
    """What the watchdog check needs from a test's world: the unit's state, diagnostics."""

    def state(self, *extra: str) -> dict[str, str]:
        """Return the unit's ActiveState, SubState, Result, MainPID and ``extra``."""
        ...

    def diagnostics(self) -> str:
        """Return what helps explain a failure."""
        ...


def assert_watchdog_keeps_it_running(world: UnitWorld, watchdog_s: int) -> None:
    """Assert the unit's watchdog pings go on past 2x WatchdogSec, without a restart."""
    first = world.state("NRestarts", "WatchdogUSec", "ActiveEnterTimestampMonotonic")
    assert first["WatchdogUSec"] == f"{watchdog_s}s"
    entered = int(first["ActiveEnterTimestampMonotonic"])

    def pinged_long_after_start() -> bool:
        last_ping = int(world.state("WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"])
        return last_ping > entered + 2 * watchdog_s * 1_000_000

    wait_until(pinged_long_after_start, deadline_s=4 * watchdog_s, what="pings past 2x WatchdogSec")
    now = world.state("NRestarts")
    assert (now["ActiveState"], now["SubState"]) == ("active", "running"), world.diagnostics()
    assert now["MainPID"] == first["MainPID"]
    assert now["NRestarts"] == first["NRestarts"]


def json_log_events(log: Path) -> set[str]:
    """Return the event names in a daemon's JSON log (none while the file is missing)."""
    names: set[str] = set()
    text = log.read_text(errors="replace") if log.exists() else ""
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("event"), str):
            names.add(record["event"])
    return names


def unit_exits(exits_log: Path) -> list[tuple[str, str, str]]:
    """Return ``(SERVICE_RESULT, EXIT_CODE, EXIT_STATUS)`` of every run the drop-in's
    ``ExecStopPost`` recorded in ``exits_log``."""
    if not exits_log.exists():
        return []
    rows = (line.split() for line in exits_log.read_text().splitlines())
    return [(row[0], row[1], row[2]) for row in rows if len(row) == 3]
