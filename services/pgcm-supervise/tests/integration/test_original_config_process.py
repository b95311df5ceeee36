"""One config.toml of the original, unchanged, runs pgcm-supervise and pgcm-failover.

The file holds every key the original read (the proxy's keys too: one file served all
of the original's commands); only pgcm's own test seams (the Pacemaker namespace, the
node name, the nudge socket) come as flags.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from pgcm_testkit.etcd import EtcdMember, random_key
from pgcm_testkit.pacemaker import PacemakerNode
from pgcm_testkit.process import daemon_env, free_tcp_port, json_events, wait_until

pytestmark = pytest.mark.integration


def _has_event(log: Path, name: str) -> bool:
    return any(e.get("event") == name for e in json_events(log))


def _original_file(path: Path, *, etcd: EtcdMember, namespace: str, grpc_port: int) -> Path:
    """Write the original's flat config.toml: every key its commands read."""
    doc: dict[str, object] = {
        "etcd-namespace": namespace,
        "etcd-postgres-master-key": "/master",
        "etcd-endpoints": [etcd.endpoint],
        "etcd-dial-timeout": "3s",
        "etcd-timeout": "5s",
        "etcd-dial-keep-alive-time": "10s",
        "etcd-keep-alive-time": "30s",
        "etcd-dial-keep-alive-timeout": "3s",
        "etcd-keep-alive-timeout": "5s",
        "etcd-get-timeout": "5s",
        "etcd-stream-poll-interval": "1m0s",
        "pgbouncer-user": "pgbouncer",
        "pgbouncer-password": "",
        "pgbouncer-database": "pgbouncer",
        "pgbouncer-socket-dir": str(path.parent / "no-pgbouncer"),
        "pgbouncer-port": "6432",
        "pgbouncer-timeout": "5s",
        "pgbouncer-config-file": "/etc/pgbouncer/pgbouncer.ini",
        "pgbouncer-config-template-file": "/etc/pgbouncer/pgbouncer.ini.template",
        "pgbouncer-retry-interval": "5s",
        "pgbouncer-retry-timeout": "5s",
        "bind-address": f"127.0.0.1:{grpc_port}",
        "host-key-update-retry-interval": "1s",
        "pacemaker-poll-interval": "200ms",
        "pacemaker-get-timeout": "10s",
        "postgres-master-crm-xpath": "//node/instance_attributes/nvpair[@value='LATEST']/../..",
        "failover-api-endpoints": [f"127.0.0.1:{grpc_port}"],
        "health-check-timeout": "5s",
        "lock-timeout": "5s",
        "pause-timeout": "5s",
        "pause-expiry": "25s",
        "resume-timeout": "5s",
        "pacemaker-timeout": "20s",
    }
    path.write_text(tomli_w.dumps(doc))
    return path


def test_the_originals_file_runs_supervise_and_failover_status(
    tmp_path: Path, etcd: EtcdMember, pacemaker_node: PacemakerNode
) -> None:
    grpc_port = free_tcp_port()
    config = _original_file(
        tmp_path / "config.toml",
        etcd=etcd,
        namespace=random_key("original").decode(),
        grpc_port=grpc_port,
    )
    log = tmp_path / "supervise.log"
    argv = [
        sys.executable,
        "-m",
        "pgcm_supervise",
        "--log-format",
        "json",
        "--config-file",
        str(config),
        "run",
        "--command-prefix",
        ",".join(pacemaker_node.command_prefix),
        "--resource-id",
        pacemaker_node.resource_id,
        "--node-name",
        pacemaker_node.name,
        "--nudge-socket",
        str(tmp_path / "supervise.sock"),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=out, env=daemon_env())
    try:
        try:
            wait_until(
                lambda: _has_event(log, "etcd.master.publish"), deadline_s=60, what="published"
            )
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{log.read_text(errors='replace')[-4000:]}") from exc
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "pgcm_failover",
                "status",
                "--json",
                "--config-file",
                str(config),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=daemon_env(),
        )
        assert status.returncode == 0, status.stderr[-4000:]
        assert json.loads(status.stdout)["etcd_primary"]["address"] == "127.0.0.1"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text(errors="replace")[-4000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    events = json_events(log)
    ignored = [e for e in events if e.get("event") == "config.keys_ignored"]
    assert [e["keys"] for e in ignored] == [
        [
            "etcd-get-timeout",
            "etcd-keep-alive-time",
            "etcd-keep-alive-timeout",
            "pgbouncer-retry-interval",
            "postgres-master-crm-xpath",
        ]
    ]
    listen = next(e for e in events if e.get("event") == "grpc.listen")
    assert listen["port"] == grpc_port
    publish = next(e for e in events if e.get("event") == "etcd.master.publish")
    assert publish["address"] == "127.0.0.1"
