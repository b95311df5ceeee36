"""Run real server binaries for tests: start, wait for readiness, show logs, stop by PID.

Every server a test uses is a child process started here. It runs in its own session
(so a terminal's Ctrl-C does not hit it first), writes to a log file that is printed
when readiness fails, and is stopped by PID only: SIGTERM, then SIGKILL after a grace.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, final

import pytest

REQUIRE_BINARIES_ENV = "PGCM_REQUIRE_BINARIES"
POSTGRES_USER = "postgres"
OTHERS_READ_EXECUTE = 0o005


def require_binary(name: str) -> str:
    """Return the path of ``name``; skip the test locally, fail it in CI, when missing.

    CI sets ``PGCM_REQUIRE_BINARIES=1`` so a missing binary can never turn a real
    component test into a silent skip.
    """
    path = shutil.which(name) or _debian_postgres_bin(name)
    if path is not None:
        return path
    message = f"binary {name!r} not found on PATH"
    if os.environ.get(REQUIRE_BINARIES_ENV) == "1":
        pytest.fail(f"{message} and {REQUIRE_BINARIES_ENV}=1")
    pytest.skip(message)


def _debian_postgres_bin(name: str) -> str | None:
    # Debian keeps initdb/pg_ctl/postgres off PATH, under the versioned bindir.
    candidate = Path("/usr/lib/postgresql/15/bin") / name
    return str(candidate) if candidate.exists() else None


_HANDED_OUT: set[int] = set()


def free_tcp_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago, never the same one twice.

    The kernel may hand the port of a just-closed probe socket out again at once: two
    calls in a row (an etcd member's client and peer port) once got the same number.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def tcp_port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Return whether something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def wait_until(predicate: Callable[[], bool], *, deadline_s: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms until it is true; raise TimeoutError after the deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {deadline_s}s waiting for {what}")


def make_world_traversable(path: Path) -> Path:
    """Let the ``postgres`` user reach ``path``: pytest's base temp dir is 0700 and root-owned."""
    path.mkdir(parents=True, exist_ok=True)
    for part in (path, *path.parents):
        if part == Path("/"):
            break
        mode = part.stat().st_mode
        if mode & OTHERS_READ_EXECUTE != OTHERS_READ_EXECUTE:
            part.chmod(mode | OTHERS_READ_EXECUTE)
    return path


def chown_to_postgres(path: Path) -> None:
    """Give ``path`` (recursively) to ``postgres``: PostgreSQL and PgBouncer refuse root."""
    entry = pwd.getpwnam(POSTGRES_USER)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in (*dirs, *files):
            os.chown(Path(root) / name, entry.pw_uid, entry.pw_gid)


def run_checked(argv: Sequence[str], *, user: str | None = None, timeout_s: float = 60) -> str:
    """Run a short command to completion and return its stdout; raise with its output on failure."""
    result = subprocess.run(
        list(argv),
        # user= alone keeps gid 0 and root's groups: the server could not reach its dirs.
        user=user,
        group=user,
        extra_groups=[] if user is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{argv[0]} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result.stdout


@final
@dataclass
class ServerProcess:
    """A server started by a test, owned by PID."""

    name: str
    argv: Sequence[str]
    log_path: Path
    user: str | None = None
    env: dict[str, str] | None = None
    cwd: Path | None = None
    stop_signal: signal.Signals = signal.SIGTERM
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def pid(self) -> int:
        """Return the PID of the running process."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """Return whether the process was started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the process in its own session with output appended to the log file."""
        if self.running:
            raise RuntimeError(f"{self.name} already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            list(self.argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            user=self.user,
            group=self.user,
            extra_groups=[] if self.user is not None else None,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )

    def wait_ready(self, predicate: Callable[[], bool], *, deadline_s: float = 15) -> None:
        """Wait until ``predicate`` holds; on failure or early exit, raise with the log tail."""

        def ready() -> bool:
            if not self.running:
                raise RuntimeError(f"{self.name} exited early\n{self.log_tail()}")
            return predicate()

        try:
            wait_until(ready, deadline_s=deadline_s, what=f"{self.name} to be ready")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.log_tail()}") from exc

    def log_tail(self, lines: int = 60) -> str:
        """Return the last lines of the process log, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return f"--- {self.name}: no log at {self.log_path} ---"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} lines of {self.log_path} ---\n{tail}"

    def send_signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the process (used by tests for SIGSTOP/SIGCONT/SIGKILL)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signum)

    def stop(self, *, grace_s: float = 10) -> None:
        """Stop by PID: the stop signal, then SIGKILL after ``grace_s``; always reaps."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            # A SIGSTOPped process would never act on SIGTERM.
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, predicate: Callable[[], bool], *, deadline_s: float = 15) -> None:
        """Stop, start again with the same arguments, and wait for readiness."""
        self.stop()
        self.start()
        self.wait_ready(predicate, deadline_s=deadline_s)


@contextlib.contextmanager
def running(
    server: ServerProcess, predicate: Callable[[], bool], *, deadline_s: float = 15
) -> Iterator[ServerProcess]:
    """Start ``server``, wait for ``predicate``, and always stop it afterwards, also on failure."""
    try:
        server.start()
        server.wait_ready(predicate, deadline_s=deadline_s)
        yield server
    finally:
        server.stop()


def daemon_env() -> dict[str, str]:
    """This process's environment without pgcm's or systemd's own variables.

    A daemon started by a test must read only the settings the test gives it, and must
    not try to notify a systemd that is not its manager.
    """
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("PGCM_", "NOTIFY_", "WATCHDOG"))
    }


def json_events(log: Path) -> list[dict[str, object]]:
    """The JSON log records of a daemon's log file (other lines are skipped)."""
    events: list[dict[str, object]] = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            events.append(record)
    return events
