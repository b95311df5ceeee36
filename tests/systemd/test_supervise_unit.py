"""The packaged ``pgcm-supervise.service`` under a real systemd 252.

supervise must run ``crm_mon`` against a running Pacemaker from inside its sandbox, with
no ``command_prefix``: the unit forbids new namespaces (``RestrictNamespaces=yes``), as
production needs. So systemd itself is booted inside the test kit's one-node Pacemaker
(``pgcm_testkit.pacemaker``): the launcher enters that node's network, mount and PID
namespaces, then creates systemd's own PID/mount/cgroup/UTS namespaces there (see
conftest.py). The unit's processes therefore share with pacemaker-based what libqb IPC
needs: the abstract unix sockets (network namespace), the node's private ``/dev/shm``
(inherited with the node's mounts) and PIDs the daemons can see (a nested PID namespace).

The node's network namespace has only ``lo``, so this test starts its own etcd inside it.
No PgBouncer runs: supervise does not need one to publish (its crash-recovery check keeps
retrying in the background and is not part of readiness).

The unit file, ``/usr/bin/pgcm-supervise`` and its venv are the ones the .debs install
(unpacked and laid over ``/usr``, ``/lib`` and ``/etc`` in systemd's mount namespace, see
conftest.py); the configuration is ``/etc/pgcm/supervise.toml``, root:haclient 0640 as
packaged. One drop-in (``pgcm-supervise.service.d/test.conf``) sends output to a file and
sets ``WatchdogSec=2s`` and ``LimitCORE=0``; nothing is read from the checkout.
"""

from __future__ import annotations

import base64
import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

import pytest
import tomli_w

from pgcm_common.pacemaker import PacemakerError, parse_crm_mon
from pgcm_common.records import KeyLayout, PrimaryRecord
from pgcm_testkit.etcd import random_key
from pgcm_testkit.pacemaker import PacemakerNode
from pgcm_testkit.process import ServerProcess, require_binary, wait_until
from tests.systemd.conftest import (
    BindMount,
    NamespacedSystemd,
    assert_watchdog_keeps_it_running,
    json_log_events,
    packages_overlays,
    start_namespaced_systemd,
    unit_exits,
)

# The first test also builds and unpacks the .debs (unless PGCM_DEBS names them).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

UNIT: Final = "pgcm-supervise.service"
PACKAGED_UNIT: Final = Path("lib/systemd/system") / UNIT  # inside the unpacked packages
CONFIG_DIR: Final = Path("/run/pgcm-test")  # inside systemd's mount namespace
WATCHDOG_S: Final = 2
# A documentation address (RFC 5737): published, never connected to.
PRIMARY_ADDRESS: Final = "192.0.2.10"
# Inside the node's network namespace, which only this test's etcd listens in.
ETCD_CLIENT: Final = "http://127.0.0.1:2379"
ETCD_PEER: Final = "http://127.0.0.1:2380"
GRPC_PORT: Final = 8080  # the node's network namespace is the test's alone
# A gRPC client run inside the node's network namespace, where the API listens.
_UNMIGRATE_CLIENT: Final = f"""
import asyncio
from grpclib.client import Channel
from pgcm_common.proto.failover import Empty, FailoverStub

async def main() -> None:
    channel = Channel("127.0.0.1", {GRPC_PORT})
    try:
        await FailoverStub(channel).unmigrate(Empty(), timeout=20)
    finally:
        channel.close()

asyncio.run(main())
"""


@final
@dataclass(frozen=True, slots=True)
class SuperviseWorld:
    """systemd with the shipped unit inside a Pacemaker node, and an etcd beside it."""

    systemd: NamespacedSystemd
    node: PacemakerNode
    layout: KeyLayout
    log: Path
    exits_log: Path

    def etcdctl(self, *args: str) -> str:
        """Run etcdctl inside the node's network namespace; return its stdout."""
        return etcdctl(self.node, *args)

    def get(self, key: bytes) -> bytes | None:
        """Return the value of ``key`` in etcd, or None."""
        kvs = json.loads(self.etcdctl("get", "-w", "json", key.decode())).get("kvs", [])
        return base64.b64decode(kvs[0]["value"]) if kvs else None

    def state(self, *extra: str) -> dict[str, str]:
        """Return the unit's ActiveState, SubState, Result, MainPID and ``extra``."""
        return self.systemd.show(UNIT, "ActiveState", "SubState", "Result", "MainPID", *extra)

    def events(self) -> set[str]:
        """Return the event names in supervise's JSON log."""
        return json_log_events(self.log)

    def exits(self) -> list[tuple[str, str, str]]:
        """Return ``(SERVICE_RESULT, EXIT_CODE, EXIT_STATUS)`` of every run that ended."""
        return unit_exits(self.exits_log)

    def diagnostics(self) -> str:
        """Return the unit's status, supervise's log, systemd's and the node's logs."""
        status = self.systemd.systemctl("status", UNIT, check=False).stdout
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        return (
            f"{status}\n--- supervise log ---\n{log[-4000:]}\n{self.systemd.log_tail()}\n"
            f"{self.node.logs(15)}"
        )


def etcdctl(node: PacemakerNode, *args: str) -> str:
    """Run etcdctl against the test etcd, from inside ``node``'s network namespace."""
    result = subprocess.run(
        [
            *("nsenter", "-t", str(node.init_pid), "-n", "--"),
            *(require_binary("etcdctl"), f"--endpoints={ETCD_CLIENT}", *args),
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    return result.stdout


@pytest.fixture(scope="module")
def node_etcd(
    pacemaker_node: PacemakerNode, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PacemakerNode]:
    """Run an etcd inside the Pacemaker node's network namespace (lo only)."""
    base = tmp_path_factory.mktemp("node-etcd")
    data_dir = base / "data"
    data_dir.mkdir(mode=0o700)
    # nsenter -n alone execs etcd in place: the PID stopped afterwards is etcd's own.
    process = ServerProcess(
        name="etcd-in-node",
        argv=[
            *("nsenter", "-t", str(pacemaker_node.init_pid), "-n", "--"),
            require_binary("etcd"),
            *("--name=node", f"--data-dir={data_dir}"),
            *(f"--listen-client-urls={ETCD_CLIENT}", f"--advertise-client-urls={ETCD_CLIENT}"),
            *(f"--listen-peer-urls={ETCD_PEER}", f"--initial-advertise-peer-urls={ETCD_PEER}"),
            *(f"--initial-cluster=node={ETCD_PEER}", "--initial-cluster-state=new"),
            *("--logger=zap", "--log-outputs=stderr"),
        ],
        log_path=base / "etcd.log",
    )

    def healthy() -> bool:
        try:
            etcdctl(pacemaker_node, "endpoint", "health")
        except subprocess.CalledProcessError:
            return False
        return True

    process.start()
    try:
        process.wait_ready(healthy, deadline_s=20)
        yield pacemaker_node
    finally:
        process.stop()


def _promoted(node: PacemakerNode) -> bool:
    try:
        out = node.exec_in_node(["crm_mon", "-1", "--output-as=xml"]).encode()
        return parse_crm_mon(out, resource_id=node.resource_id).primary_node == node.name
    except (RuntimeError, PacemakerError):
        return False


@pytest.fixture(scope="module")
def world(
    node_etcd: PacemakerNode, installed_tree: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SuperviseWorld]:
    """Boot systemd inside the Pacemaker node with the packaged unit and its drop-in."""
    node = node_etcd
    # Readiness follows the first publication attempt: only a promoted clone makes
    # "published when systemctl start returns" a fact to assert rather than a race.
    wait_until(lambda: _promoted(node), deadline_s=60, what="the clone to be promoted")
    base = tmp_path_factory.mktemp("systemd-supervise")
    layout = KeyLayout(random_key("systemd-supervise").decode())
    config_dir = base / "pgcm-test"
    config_dir.mkdir()
    config_dir.chmod(0o755)
    etc_layer = base / "etc"
    (etc_layer / "pgcm").mkdir(parents=True)
    _write_config(etc_layer / "pgcm" / "supervise.toml", node, layout)
    units = base / "units"
    (units / f"{UNIT}.d").mkdir(parents=True)
    shutil.copyfile(installed_tree / PACKAGED_UNIT, units / UNIT)
    (units / f"{UNIT}.d" / "test.conf").write_text(_drop_in())
    enter = ("nsenter", "-t", str(node.init_pid), "-n", "-m", "-p", "--")
    binds = [BindMount(config_dir, CONFIG_DIR)]
    overlays = packages_overlays(installed_tree, etc_layer)
    with start_namespaced_systemd(
        base / "systemd", units, binds, enter=enter, overlays=overlays
    ) as systemd:
        yield SuperviseWorld(
            systemd, node, layout, config_dir / "supervise.log", config_dir / "exits"
        )


def _drop_in() -> str:
    lines = [
        "[Service]",
        f"StandardOutput=append:{CONFIG_DIR}/supervise.log",
        "StandardError=inherit",
        f"WatchdogSec={WATCHDOG_S}s",
        "LimitCORE=0",
        # Record how each run ended ("+": outside the sandbox, to write the test's file).
        (
            'ExecStopPost=+/bin/sh -c \'echo "$${SERVICE_RESULT} $${EXIT_CODE} $${EXIT_STATUS}"'
            f" >> {CONFIG_DIR}/exits'"
        ),
    ]
    return "\n".join(lines) + "\n"


def _write_config(path: Path, node: PacemakerNode, layout: KeyLayout) -> None:
    doc = {
        "cluster": {"namespace": layout.namespace},
        "etcd": {"endpoints": [ETCD_CLIENT]},
        # No PgBouncer: a socket directory with nothing in it (health would say so).
        "pgbouncer": {"host": str(CONFIG_DIR / "no-pgbouncer"), "connect_timeout": "1s"},
        "supervise": {
            "node_name": node.name,
            "resource_id": node.resource_id,
            "address_source": "static",
            "node_addresses": {node.name: PRIMARY_ADDRESS},
            "crm_mon_interval": "200ms",
            "bind_address": f"127.0.0.1:{GRPC_PORT}",
        },
    }
    path.write_text(tomli_w.dumps(doc))
    # As packaged: root-owned, readable by the service's group only.
    os.chown(path, 0, grp.getgrnam("haclient").gr_gid)
    path.chmod(0o640)


@pytest.fixture
def stopped_afterwards(world: SuperviseWorld) -> Iterator[SuperviseWorld]:
    """Leave the unit stopped, its failure state cleared and the primary keys gone."""
    try:
        yield world
    finally:
        world.systemd.systemctl("stop", UNIT, check=False)
        world.systemd.systemctl("reset-failed", UNIT, check=False)
        world.etcdctl("del", "--prefix", world.layout.namespace)


@pytest.fixture
def running(stopped_afterwards: SuperviseWorld) -> SuperviseWorld:
    """The unit started (``systemctl start`` returned)."""
    world = stopped_afterwards
    world.systemd.systemctl("start", UNIT)
    assert world.state()["SubState"] == "running", world.diagnostics()
    return world


def test_start_returns_only_after_the_promoted_node_is_published_by_the_sandboxed_unit(
    stopped_afterwards: SuperviseWorld,
) -> None:
    world = stopped_afterwards
    assert world.get(world.layout.master) is None
    world.systemd.systemctl("start", UNIT)  # Type=notify: returns after READY=1

    # The moment systemctl returns, the first publication is already in etcd: supervise
    # ran crm_mon under the shipped sandbox and saw the promoted clone.
    state = world.state()
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), world.diagnostics()
    assert world.get(world.layout.master) == PRIMARY_ADDRESS.encode(), world.diagnostics()
    raw = world.get(world.layout.master_record)
    assert raw is not None
    record = PrimaryRecord.from_json(world.layout.master_record, raw)
    assert (record.node, record.address) == (world.node.name, PRIMARY_ADDRESS)
    assert {"supervise.ready", "etcd.master.publish"} <= world.events()
    _assert_sandboxed(world, int(state["MainPID"]))


def _host_pid(world: SuperviseWorld, main_pid: int) -> int:
    """Return the host PID of the unit's main process (systemd reports its own PIDs)."""
    for pid in world.systemd.host_pids(UNIT):
        status = Path(f"/proc/{pid}/status").read_text()
        nspids = next(line for line in status.splitlines() if line.startswith("NSpid:"))
        if int(nspids.split()[-1]) == main_pid:
            return pid
    raise AssertionError(f"main PID {main_pid} not in the unit's cgroup\n{world.diagnostics()}")


def _assert_sandboxed(world: SuperviseWorld, main_pid: int) -> None:
    """Check that the shipped sandbox is really in force on the running supervise."""
    pid = _host_pid(world, main_pid)
    status = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    assert status["Uid"].split()[0] == str(pwd.getpwnam("hacluster").pw_uid)
    assert status["Gid"].split()[0] == str(grp.getgrnam("haclient").gr_gid)
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"  # SystemCallFilter
    assert int(status["CapBnd"], 16) == 0  # CapabilityBoundingSet=
    assert int(status["CapEff"], 16) == 0
    mounts = {
        fields[4]: fields[5].split(",")
        for fields in (
            line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        )
    }
    assert "ro" in mounts["/"]  # ProtectSystem=strict
    assert "rw" in mounts["/dev/shm"]  # ReadWritePaths=/dev/shm (libqb ring buffers)
    assert "rw" in mounts["/run/pgcm"]  # RuntimeDirectory=pgcm (the nudge socket)
    # The packaged command and venv, with the packaged configuration file.
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert argv[:3] == ["/usr/lib/pgcm-supervise/bin/python", "/usr/bin/pgcm-supervise", "run"]
    assert argv[3:5] == ["--config-file", "/etc/pgcm/supervise.toml"]


def test_watchdog_pings_keep_the_service_running_past_watchdog_sec(
    running: SuperviseWorld,
) -> None:
    assert_watchdog_keeps_it_running(running, WATCHDOG_S)


def test_stop_exits_0_and_revokes_the_node_status(running: SuperviseWorld) -> None:
    world = running
    status_key = world.layout.node_status(world.node.name)
    wait_until(
        lambda: world.get(status_key) is not None, deadline_s=10, what="the node status record"
    )
    runs = len(world.exits())
    world.systemd.systemctl("stop", UNIT)
    assert world.state()["ActiveState"] == "inactive", world.diagnostics()  # not "failed"
    # Exited by itself with status 0 on SIGTERM: not killed, not timed out.
    assert world.exits()[runs:] == [("success", "exited", "0")], world.diagnostics()
    assert world.get(status_key) is None  # the status lease was revoked
    assert "shutdown.start" in world.events()


def test_unmigrate_runs_crm_resource_under_the_sandbox(running: SuperviseWorld) -> None:
    world = running
    # crm_resource --clear writes the CIB through pacemaker-based's IPC, as migrate does.
    client = subprocess.run(
        [
            *("nsenter", "-t", str(world.node.init_pid), "-n", "--"),
            *(sys.executable, "-c", _UNMIGRATE_CLIENT),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert client.returncode == 0, f"{client.stderr}\n{world.diagnostics()}"
    assert "pacemaker.unmigrate" in world.events(), world.diagnostics()
    assert "pacemaker.unmigrate.failed" not in world.events()
