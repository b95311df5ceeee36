from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from pgcm_common.lifecycle import run_until_signalled, sd_notify, settle_memory, systemd_watchdog

# The child: its main announces readiness on stdout, then waits to be cancelled. With
# HANG_IN_CLEANUP its (shielded) cleanup never finishes, so only a second signal ends it.
CHILD = textwrap.dedent(
    """
    import os, sys, anyio
    from pgcm_common.lifecycle import run_until_signalled
    from pgcm_common.logging import configure_logging

    async def main(label: str) -> None:
        try:
            sys.stdout.write(f"ready {label}\\n"); sys.stdout.flush()
            await anyio.sleep_forever()
        finally:
            sys.stdout.write("cleanup\\n"); sys.stdout.flush()
            if os.environ.get("HANG_IN_CLEANUP"):
                with anyio.CancelScope(shield=True):
                    await anyio.sleep_forever()

    configure_logging(json=True)
    run_until_signalled(main, "x")
    sys.stdout.write("exited cleanly\\n")
    """
)


@pytest.fixture
def child_factory() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _start(started: list[subprocess.Popen[str]], **env: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    started.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready x\n"  # blocks until the receiver is installed
    return proc


def test_first_sigterm_unwinds_and_exits_zero(child_factory: list[subprocess.Popen[str]]) -> None:
    proc = _start(child_factory)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert out.splitlines() == ["cleanup", "exited cleanly"]
    event = json.loads(err.splitlines()[0])
    assert (event["event"], event["signal"]) == ("shutdown.start", "SIGTERM")


def test_sigint_also_exits_zero(child_factory: list[subprocess.Popen[str]]) -> None:
    proc = _start(child_factory)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=10)
    assert proc.returncode == 0


def test_second_signal_kills_a_process_stuck_in_cleanup(
    child_factory: list[subprocess.Popen[str]],
) -> None:
    proc = _start(child_factory, HANG_IN_CLEANUP="1")
    assert proc.stdout is not None
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline() == "cleanup\n"  # the first signal was handled
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGTERM


def test_sd_notify_sends_a_datagram_to_notify_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        assert sd_notify("READY=1", environ={"NOTIFY_SOCKET": path}) is True
        assert server.recv(1024) == b"READY=1"
        assert sd_notify({"STATUS": "ok", "WATCHDOG": "1"}, environ={"NOTIFY_SOCKET": path})
        assert server.recv(1024) == b"STATUS=ok\nWATCHDOG=1"


def test_sd_notify_outside_systemd_does_nothing() -> None:
    assert sd_notify("STOPPING=1", environ={}) is False


def test_systemd_watchdog_is_read_for_our_pid_only() -> None:
    assert systemd_watchdog({"WATCHDOG_USEC": "30000000"}, 7) == timedelta(seconds=30)
    assert systemd_watchdog({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 7) == timedelta(
        seconds=30
    )
    assert systemd_watchdog({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, 7) is None
    assert systemd_watchdog({"WATCHDOG_USEC": "0"}, 7) is None
    assert systemd_watchdog({}, 7) is None


def test_main_ending_on_its_own_is_reported_as_not_signalled() -> None:
    async def main() -> None:
        await anyio.lowlevel.checkpoint()

    assert run_until_signalled(main) is False


def test_settle_memory_freezes_the_objects_alive_at_start_up() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        settle_memory()
        # Modules, classes and schemas alive now are out of later full collections.
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
