"""The packaged ``pgcm-proxy.service`` under a real systemd 252.

systemd runs as PID 1 of its own namespaces (see conftest.py). The .debs are unpacked
and laid over ``/usr``, ``/lib`` and ``/etc`` inside systemd's mount namespace, so the
unit file, ``/usr/bin/pgcm-proxy`` and its venv under ``/usr/lib/pgcm-proxy`` are the
installed ones, and the configuration is ``/etc/pgcm/proxy.toml`` (root:postgres 0640,
as packaged). One drop-in
(``pgcm-proxy.service.d/test.conf``) changes only what a test machine needs:

* ``StandardOutput``: a file, as there is no journald in this systemd;
* ``WatchdogSec=2s`` instead of 30 s, so watchdog tests take seconds; ``LimitCORE=0`` so
  the watchdog's SIGABRT leaves no core file;
* ``ExecStopPost=+``: records how each run ended.

The sandbox (``ProtectSystem=strict``, ``ReadWritePaths=/etc/pgbouncer``,
``MemoryDenyWriteExecute``, the syscall filter, ``User=postgres`` …) is the shipped
one. ``/etc/pgbouncer`` is a temporary directory bind-mounted inside systemd's mount
namespace only: the test kit's PgBouncer reads its ini there, and the proxy writes it
through the path the unit grants. Nothing is read from the checkout, so the test passes
from a clone under /root or /tmp alike.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

import pytest
import tomli_w

from pgcm_common.records import KeyLayout, ProxyAck
from pgcm_testkit.etcd import EtcdMember, random_key
from pgcm_testkit.pgbouncer import ADMIN_PASSWORD, PgBouncerServer, start_pgbouncer
from pgcm_testkit.process import POSTGRES_USER, free_tcp_port, require_binary, wait_until
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

UNIT: Final = "pgcm-proxy.service"
PACKAGED_UNIT: Final = Path("lib/systemd/system") / UNIT  # inside the unpacked packages
PROXY_ID: Final = "systemd-test"
CONFIG_DIR: Final = Path("/run/pgcm-test")  # inside systemd's mount namespace
ETC_PGBOUNCER: Final = Path("/etc/pgbouncer")
WATCHDOG_S: Final = 2
RELOAD_LINE: Final = "RELOAD command issued"


def _drop_in() -> str:
    lines = [
        "[Service]",
        f"StandardOutput=append:{CONFIG_DIR}/proxy.log",
        "StandardError=inherit",
        f"WatchdogSec={WATCHDOG_S}s",
        "LimitCORE=0",
        # Record how each run ended ("+": outside the sandbox, to write the test's file).
        # A clean stop leaves the unit inactive, and systemd then forgets its exit status.
        (
            'ExecStopPost=+/bin/sh -c \'echo "$${SERVICE_RESULT} $${EXIT_CODE} $${EXIT_STATUS}"'
            f" >> {CONFIG_DIR}/exits'"
        ),
    ]
    return "\n".join(lines) + "\n"


@final
@dataclass(frozen=True, slots=True)
class ProxyWorld:
    """systemd with the shipped unit, a PgBouncer whose ini the unit owns, an etcd."""

    systemd: NamespacedSystemd
    bouncer: PgBouncerServer
    etcd: EtcdMember
    layout: KeyLayout
    proxy_log: Path
    exits_log: Path

    def etcdctl(self, *args: str) -> str:
        """Run etcdctl against the test etcd and return its stdout."""
        result = subprocess.run(
            [require_binary("etcdctl"), f"--endpoints={self.etcd.endpoint}", *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
        return result.stdout

    def put_primary(self, host: str) -> int:
        """Publish ``host`` as the primary; return the etcd revision of the write."""
        out = self.etcdctl("put", "-w", "json", self.layout.master.decode(), host)
        revision: int = json.loads(out)["header"]["revision"]
        return revision

    def ack(self) -> ProxyAck | None:
        """Return the proxy's acknowledgement in etcd, or None."""
        key = self.layout.proxy_ack(PROXY_ID)
        out = self.etcdctl("get", "-w", "json", key.decode())
        kvs = json.loads(out).get("kvs", [])
        if not kvs:
            return None
        return ProxyAck.from_json(key, base64.b64decode(kvs[0]["value"]))

    def state(self, *extra: str) -> dict[str, str]:
        """Return the unit's ActiveState, SubState, Result, MainPID and ``extra``."""
        return self.systemd.show(UNIT, "ActiveState", "SubState", "Result", "MainPID", *extra)

    def saw(self, event: str) -> bool:
        """Return whether the proxy's JSON log holds ``event``."""
        return event in json_log_events(self.proxy_log)

    def exits(self) -> list[tuple[str, str, str]]:
        """Return ``(SERVICE_RESULT, EXIT_CODE, EXIT_STATUS)`` of every run that ended."""
        return unit_exits(self.exits_log)

    def diagnostics(self) -> str:
        """Return the unit's status, the proxy's log and systemd's log, for failures."""
        status = self.systemd.systemctl("status", UNIT, check=False).stdout
        log = self.proxy_log.read_text(errors="replace") if self.proxy_log.exists() else ""
        return f"{status}\n--- proxy log ---\n{log[-4000:]}\n{self.systemd.log_tail()}"


@pytest.fixture(scope="module")
def world(
    etcd: EtcdMember, installed_tree: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyWorld]:
    """Boot systemd with the packaged unit and its drop-in, next to a real PgBouncer."""
    base = tmp_path_factory.mktemp("systemd-proxy")
    backend_port = free_tcp_port()  # nothing listens: PgBouncer connects only for clients
    with start_pgbouncer(
        base / "etc-pgbouncer",
        databases={"app": f"host=127.0.0.1 port={backend_port} dbname=postgres"},
        pool_mode="session",
    ) as bouncer:
        route = f"host=127.0.0.1 port={backend_port}"
        template = bouncer.ini_path.read_text().replace(
            route, f"host={{{{.Host}}}} port={backend_port}"
        )
        (bouncer.ini_path.parent / "pgbouncer.ini.template").write_text(template)
        layout = KeyLayout(random_key("systemd").decode())
        config_dir = base / "pgcm-test"
        config_dir.mkdir()
        etc_layer = base / "etc"
        (etc_layer / "pgcm").mkdir(parents=True)
        _write_config(etc_layer / "pgcm" / "proxy.toml", etcd, bouncer, layout)
        units = base / "units"
        (units / f"{UNIT}.d").mkdir(parents=True)
        shutil.copyfile(installed_tree / PACKAGED_UNIT, units / UNIT)
        (units / f"{UNIT}.d" / "test.conf").write_text(_drop_in())
        binds = [
            BindMount(bouncer.ini_path.parent, ETC_PGBOUNCER),
            BindMount(config_dir, CONFIG_DIR),
        ]
        overlays = packages_overlays(installed_tree, etc_layer)
        with start_namespaced_systemd(base / "systemd", units, binds, overlays=overlays) as systemd:
            yield ProxyWorld(
                systemd, bouncer, etcd, layout, config_dir / "proxy.log", config_dir / "exits"
            )


def _write_config(
    path: Path, etcd: EtcdMember, bouncer: PgBouncerServer, layout: KeyLayout
) -> None:
    doc = {
        "cluster": {"namespace": layout.namespace},
        "etcd": {"endpoints": [etcd.endpoint]},
        "pgbouncer": {
            "host": "127.0.0.1",
            "port": bouncer.port,
            "user": POSTGRES_USER,
            "password": ADMIN_PASSWORD,
            "connect_timeout": "1s",
        },
        "proxy": {
            "pgbouncer_config_file": str(ETC_PGBOUNCER / "pgbouncer.ini"),
            "pgbouncer_config_template_file": str(ETC_PGBOUNCER / "pgbouncer.ini.template"),
            "proxy_id": PROXY_ID,
            "retry_interval": "50ms",
            "retry_max_interval": "500ms",
            "ack_lease_ttl": "10s",
        },
    }
    path.write_text(tomli_w.dumps(doc))
    # As packaged: root-owned, readable by the service's group only (it holds a password).
    os.chown(path, 0, pwd.getpwnam(POSTGRES_USER).pw_gid)
    path.chmod(0o640)


@pytest.fixture
def stopped_afterwards(world: ProxyWorld) -> Iterator[ProxyWorld]:
    """Leave the unit stopped, its failure state cleared and the primary key gone."""
    try:
        yield world
    finally:
        world.systemd.systemctl("stop", UNIT, check=False)
        world.systemd.systemctl("reset-failed", UNIT, check=False)
        world.etcdctl("del", world.layout.master.decode())


@pytest.fixture
def running(stopped_afterwards: ProxyWorld) -> ProxyWorld:
    """The unit started (``systemctl start`` returned) with a primary in etcd."""
    world = stopped_afterwards
    world.put_primary("127.0.0.9")
    world.systemd.systemctl("start", UNIT)
    assert world.state()["SubState"] == "running", world.diagnostics()
    return world


def test_start_returns_only_after_the_first_apply_is_rendered_reloaded_and_acknowledged(
    stopped_afterwards: ProxyWorld,
) -> None:
    world = stopped_afterwards
    host = "127.0.0.2"
    assert world.ack() is None
    world.systemd.systemctl("start", "--no-block", UNIT)
    # Running and watching, but no primary in etcd yet: not ready.
    try:
        wait_until(lambda: world.saw("proxy.start"), deadline_s=20, what="proxy.start")
    except TimeoutError as exc:
        raise AssertionError(world.diagnostics()) from exc
    state = world.state()
    assert (state["ActiveState"], state["SubState"]) == ("activating", "start"), world.diagnostics()
    assert f"host={host}" not in world.bouncer.ini_path.read_text()

    revision = world.put_primary(host)
    world.systemd.systemctl("start", UNIT)  # waits for the pending start job

    # The moment systemctl returns, everything readiness promises is already true.
    state = world.state()
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), world.diagnostics()
    ini = world.bouncer.ini_path
    assert f"host={host} " in ini.read_text()
    assert ini.stat().st_uid == pwd.getpwnam(POSTGRES_USER).pw_uid  # owner kept
    assert RELOAD_LINE in world.bouncer.log_path.read_text(errors="replace")
    ack = world.ack()
    assert ack is not None, world.diagnostics()
    assert (ack.host, ack.revision) == (host, revision)
    assert world.saw("proxy.ready")
    _assert_sandboxed(world)


def _assert_sandboxed(world: ProxyWorld) -> None:
    """Check that the shipped sandbox is really in force on the running proxy."""
    (pid,) = world.systemd.host_pids(UNIT)
    status = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    postgres = pwd.getpwnam(POSTGRES_USER).pw_uid
    assert status["Uid"].split()[0] == str(postgres)
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"  # SystemCallFilter / MemoryDenyWriteExecute
    assert int(status["CapBnd"], 16) == 0  # CapabilityBoundingSet=
    mounts = {
        fields[4]: fields[5].split(",")
        for fields in (
            line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        )
    }
    assert "ro" in mounts["/"]  # ProtectSystem=strict
    assert "rw" in mounts[str(ETC_PGBOUNCER)]  # ReadWritePaths=/etc/pgbouncer
    # The packaged command and venv, with the packaged configuration file.
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert argv[:3] == ["/usr/lib/pgcm-proxy/bin/python", "/usr/bin/pgcm-proxy", "run"]
    assert argv[3:5] == ["--config-file", "/etc/pgcm/proxy.toml"]


def test_watchdog_pings_keep_the_service_running_past_watchdog_sec(running: ProxyWorld) -> None:
    assert_watchdog_keeps_it_running(running, WATCHDOG_S)


def test_a_frozen_proxy_is_killed_by_the_watchdog_and_restarted(running: ProxyWorld) -> None:
    world = running
    before = world.state("NRestarts")
    world.systemd.systemctl("kill", "--kill-who=main", "--signal=SIGSTOP", UNIT)

    # Result=watchdog is visible while the unit waits RestartSec before restarting.
    wait_until(
        lambda: world.state()["Result"] == "watchdog",
        deadline_s=WATCHDOG_S + 10,
        what="the watchdog to fire",
    )

    def restarted_and_ready() -> bool:
        state = world.state("NRestarts")
        return state["SubState"] == "running" and state["MainPID"] != before["MainPID"]

    wait_until(restarted_and_ready, deadline_s=20, what="the restarted proxy to be ready")
    assert int(world.state("NRestarts")["NRestarts"]) == int(before["NRestarts"]) + 1
    # systemd's watchdog signal (SIGABRT, then SIGCONT) ended the frozen process.
    assert world.exits()[-1] == ("watchdog", "killed", "ABRT"), world.diagnostics()


def test_stop_exits_cleanly_and_revokes_the_ack(running: ProxyWorld) -> None:
    world = running
    assert world.ack() is not None
    runs = len(world.exits())
    world.systemd.systemctl("stop", UNIT)
    assert world.state()["ActiveState"] == "inactive", world.diagnostics()  # not "failed"
    # Exited by itself with status 0 on SIGTERM: not killed, not timed out.
    assert world.exits()[runs:] == [("success", "exited", "0")], world.diagnostics()
    assert world.ack() is None
    assert world.saw("shutdown.start")
    assert world.saw("shutdown.complete")
