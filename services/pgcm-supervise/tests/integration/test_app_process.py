"""The real ``pgcm-supervise`` process: readiness, SIGTERM exits 0, bad config exits 2."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from pgcm_testkit.etcd import EtcdMember, random_key
from pgcm_testkit.pacemaker import PacemakerNode
from pgcm_testkit.process import daemon_env, free_tcp_port, json_events, tcp_port_open, wait_until

pytestmark = pytest.mark.integration


def _has_event(log: Path, name: str) -> bool:
    return any(e.get("event") == name for e in json_events(log))


def test_supervise_publishes_then_exits_0_on_sigterm(
    tmp_path: Path, etcd: EtcdMember, pacemaker_node: PacemakerNode
) -> None:
    sock = tmp_path / "supervise.sock"
    log = tmp_path / "supervise.log"
    grpc_port, metrics_port = free_tcp_port(), free_tcp_port()
    argv = [
        sys.executable,
        "-m",
        "pgcm_supervise",
        "--log-format",
        "json",
        "run",
        "--etcd-endpoints",
        etcd.endpoint,
        "--cluster-namespace",
        random_key("app").decode(),
        "--command-prefix",
        ",".join(pacemaker_node.command_prefix),
        "--resource-id",
        pacemaker_node.resource_id,
        "--node-name",
        pacemaker_node.name,
        "--nudge-socket",
        str(sock),
        "--bind-address",
        f"127.0.0.1:{grpc_port}",
        "--metrics-address",
        f"127.0.0.1:{metrics_port}",
        "--pgbouncer-host",
        str(tmp_path / "no-pgbouncer"),
        "--crm-mon-interval",
        "200ms",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=out, env=daemon_env())
    try:
        try:
            wait_until(lambda: _has_event(log, "supervise.ready"), deadline_s=60, what="ready")
            wait_until(
                lambda: _has_event(log, "etcd.master.publish"), deadline_s=60, what="published"
            )
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{log.read_text(errors='replace')[-4000:]}") from exc
        assert sock.exists()
        assert tcp_port_open(grpc_port)
        with urllib.request.urlopen(
            f"http://127.0.0.1:{metrics_port}/metrics", timeout=10
        ) as response:
            body = response.read().decode()
        assert 'pgcm_supervise_published_primary_info{address="127.0.0.1",node="pcmk1"} 1.0' in body
        assert 'pgcm_build_info{service="pgcm-supervise",version="' in body
        assert "pgcm_supervise_last_publication_timestamp_seconds " in body
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text(errors="replace")[-4000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    publish = next(e for e in json_events(log) if e.get("event") == "etcd.master.publish")
    assert publish["address"] == "127.0.0.1"
    assert not sock.exists()
    names = {e.get("event") for e in json_events(log)}
    assert {"grpc.listen", "metrics.listen", "nudge.listen", "shutdown.start"} <= names


def test_supervise_with_a_bad_setting_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pgcm_supervise", "run", "--status-lease-ttl", "1s"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=daemon_env(),
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "status_lease_ttl" in result.stderr
