"""Acceptance driver for compose/: the same checks as the lab, through the docker SDK.

Skips, saying why, where no Docker engine answers (CI has none).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgcm_lab.crm import parse_crm_mon

docker = pytest.importorskip("docker")

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[4]
COMPOSE = ROOT / "compose" / "docker-compose.yml"


def _engine_socket_answers() -> bool:
    # Probe the default socket ourselves: the SDK leaks its socket when nobody answers.
    if os.environ.get("DOCKER_HOST"):
        return True
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect("/var/run/docker.sock")
        except OSError:
            return False
    return True


def _client() -> object:
    if not _engine_socket_answers():
        pytest.skip("no Docker engine answers on /var/run/docker.sock: compose tests skipped")
    try:
        client = docker.from_env()
    except Exception as exc:  # noqa: BLE001  # any failure means: no engine here
        pytest.skip(f"no Docker engine answers ({exc.__class__.__name__}): compose tests skipped")
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001  # any failure means: no engine here
        client.close()
        pytest.skip(f"no Docker engine answers ({exc.__class__.__name__}): compose tests skipped")
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI (compose plugin) is not installed")
    return client


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    client = _client()
    compose = ["docker", "compose", "-f", str(COMPOSE)]
    subprocess.run([*compose, "up", "-d", "--build"], check=True, timeout=900)
    try:
        yield client
    finally:
        subprocess.run([*compose, "down", "-v"], check=False, timeout=300)
        client.close()  # type: ignore[attr-defined]


def _crm(client: object, node: str) -> str:
    container = client.containers.get(f"pgcmlab-{node}")  # type: ignore[attr-defined]
    code, out = container.exec_run(["crm_mon", "-1", "--output-as=xml"])
    return str(out.decode()) if code == 0 else ""


def _wait_primary(client: object, node: str, deadline: float) -> str:
    while time.monotonic() < deadline:
        xml = _crm(client, node)
        if xml and (primary := parse_crm_mon(xml).primary) is not None:
            return primary
        time.sleep(1)  # polling a remote engine; no event to wait on
    pytest.fail("no primary within the deadline")


def test_compose_cluster_comes_up_with_one_primary(cluster: object) -> None:
    assert _wait_primary(cluster, "n1", time.monotonic() + 300) in {"n1", "n2", "n3"}


def test_compose_switchover_moves_the_primary(cluster: object) -> None:
    primary = _wait_primary(cluster, "n1", time.monotonic() + 300)
    target = "n2" if primary != "n2" else "n3"
    container = cluster.containers.get(f"pgcmlab-{target}")  # type: ignore[attr-defined]
    code, out = container.exec_run(
        ["crm_resource", "--resource", "pgsql-ha", "--move", "--promoted", "--node", target]
    )
    assert code == 0, out
    deadline = time.monotonic() + 120
    while _wait_primary(cluster, target, deadline) != target:
        time.sleep(1)
    container.exec_run(["crm_resource", "--resource", "pgsql-ha", "--clear"])
