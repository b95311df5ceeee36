"""pgcm-proxy as a real subprocess against real etcd, PgBouncer and two PostgreSQL servers.

The two PostgreSQL servers share one port on two loopback addresses (127.0.0.1 and
127.0.0.2), so the template's only variable is the host, exactly as in production.
Each server has its own ``cluster_name`` (``alpha``/``beta``) so a client connection
through PgBouncer tells which one it reached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import final

import anyio
import asyncpg
import pytest
import tomli_w
from anyio.abc import Process

from pgcm_common.etcd import GatewayStore, open_etcd
from pgcm_common.pgbouncer import RoutingConsole
from pgcm_common.records import HoldRecord, KeyLayout, ProxyAck
from pgcm_testkit.etcd import EtcdMember, random_key
from pgcm_testkit.eventually import eventually
from pgcm_testkit.pgbouncer import ADMIN_PASSWORD, PgBouncerServer, start_pgbouncer
from pgcm_testkit.postgres import PostgresServer, start_postgres
from pgcm_testkit.process import POSTGRES_USER, free_tcp_port, require_binary, wait_until

HOST_A = "127.0.0.1"
HOST_B = "127.0.0.2"
PROXY_BIN = Path(sys.executable).parent / "pgcm-proxy"


@final
@dataclass(frozen=True, slots=True)
class Backends:
    """Two independent PostgreSQL servers on the same port, different loopback hosts."""

    port: int
    alpha: PostgresServer
    beta: PostgresServer


def _pg_ready(host: str, port: int) -> bool:
    result = subprocess.run(
        [require_binary("pg_isready"), "-q", "-h", host, "-p", str(port), "-t", "1"],
        check=False,
        timeout=5,
    )
    return result.returncode == 0


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    """Start ``alpha`` on 127.0.0.1:P and ``beta`` on 127.0.0.2:P."""
    port = free_tcp_port()
    # The test kit's readiness check asks 127.0.0.1:P, which alpha already answers:
    # beta's own address is waited for as well.
    with (
        start_postgres(tmp_path_factory.mktemp("pg-alpha"), port=port, name="alpha") as alpha,
        start_postgres(
            tmp_path_factory.mktemp("pg-beta"),
            port=port,
            name="beta",
            extra_settings={"listen_addresses": HOST_B},
        ) as beta,
    ):
        wait_until(lambda: _pg_ready(HOST_B, port), deadline_s=30, what="beta on 127.0.0.2")
        yield Backends(port, alpha, dataclasses.replace(beta, host=HOST_B))


def template_for(bouncer: PgBouncerServer, backends: Backends) -> str:
    """Return the template that renders (for ``HOST_A``) exactly the ini PgBouncer started with."""
    text = bouncer.ini_path.read_text()
    route = f"host={HOST_A} port={backends.port}"
    assert route in text
    return text.replace(route, f"host={{{{.Host}}}} port={backends.port}")


@final
@dataclass
class ProxyRig:
    """One test's world: a PgBouncer, its template, an etcd namespace, a proxy config."""

    bouncer: PgBouncerServer
    backends: Backends
    etcd: EtcdMember
    base: Path
    namespace: str
    proxy_id: str
    template_path: Path
    config_path: Path
    ack_lease_ttl: str = "10s"
    metrics_port: int | None = None
    log_paths: list[Path] = field(default_factory=list)

    @property
    def layout(self) -> KeyLayout:
        """Return the etcd keys of this test's namespace."""
        return KeyLayout(self.namespace)

    @property
    def ini_path(self) -> Path:
        """Return the pgbouncer.ini the proxy owns."""
        return self.bouncer.ini_path

    def write_config(self, **proxy_overrides: str) -> Path:
        """Write the proxy's TOML config (everything in the file, nothing in flags)."""
        proxy: dict[str, str] = {
            "pgbouncer_config_file": str(self.ini_path),
            "pgbouncer_config_template_file": str(self.template_path),
            "proxy_id": self.proxy_id,
            "poll_interval": "30s",
            "retry_interval": "50ms",
            "retry_max_interval": "500ms",
            "ack_lease_ttl": self.ack_lease_ttl,
            "apply_timeout": "5s",
        }
        if self.metrics_port is not None:
            proxy["metrics_address"] = f"127.0.0.1:{self.metrics_port}"
        proxy.update(proxy_overrides)
        doc = {
            "proxy": proxy,
            "cluster": {"namespace": self.namespace},
            "etcd": {"endpoints": [self.etcd.endpoint], "keepalive_time": "5s"},
            "pgbouncer": {
                "host": "127.0.0.1",
                "port": self.bouncer.port,
                "user": POSTGRES_USER,
                "password": ADMIN_PASSWORD,
                "connect_timeout": "1s",
            },
        }
        self.config_path.write_text(tomli_w.dumps(doc))
        return self.config_path

    def new_log(self) -> Path:
        """Return a fresh log file path for one proxy process."""
        path = self.base / f"proxy-{len(self.log_paths)}.log"
        self.log_paths.append(path)
        return path

    @contextlib.asynccontextmanager
    async def proxy(self) -> AsyncIterator[RunningProxy]:
        """Run ``pgcm-proxy run --config-file F``; SIGKILL it if the test did not stop it."""
        log_path = self.new_log()
        with log_path.open("wb") as log_file:
            process = await anyio.open_process(
                [
                    str(PROXY_BIN),
                    "--log-format",
                    "json",
                    "run",
                    "--config-file",
                    str(self.config_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env={k: v for k, v in os.environ.items() if not k.startswith("PGCM_")},
            )
            running = RunningProxy(process, log_path)
            try:
                yield running
            finally:
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                with anyio.move_on_after(10, shield=True):
                    await process.wait()

    async def client_reaches(self) -> str:
        """Connect through PgBouncer as an application would; return ``cluster_name``."""
        connection = await asyncpg.connect(
            self.bouncer.client_dsn("app"), statement_cache_size=0, timeout=5
        )
        try:
            return str(await connection.fetchval("SHOW cluster_name"))
        finally:
            await connection.close()

    async def ack(self, store: GatewayStore) -> ProxyAck | None:
        """Return the proxy's acknowledgement, or None."""
        kv = await store.get(self.layout.proxy_ack(self.proxy_id))
        return None if kv is None else ProxyAck.from_json(kv.key, kv.value)

    async def wait_ack(self, store: GatewayStore, host: str, revision: int) -> ProxyAck:
        """Wait until the ack names ``host`` at ``revision`` or later."""
        while True:
            ack = await self.ack(store)
            if ack is not None and ack.host == host and ack.revision >= revision:
                return ack
            await anyio.sleep(0.02)


@final
@dataclass
class RunningProxy:
    """A pgcm-proxy subprocess and its JSON log."""

    process: Process
    log_path: Path

    def events(self) -> list[dict[str, object]]:
        """Return the parsed JSON log lines so far."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    out.append(record)
        return out

    def saw(self, event: str, **fields: object) -> bool:
        """Return whether the log holds ``event`` with these field values."""
        return any(
            e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
            for e in self.events()
        )

    async def terminate(self) -> int:
        """Send SIGTERM and return the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return await self.process.wait()


@contextlib.contextmanager
def proxy_rig(
    backends: Backends, etcd: EtcdMember, base: Path, pool_mode: str, settings: dict[str, str]
) -> Iterator[ProxyRig]:
    """A PgBouncer in ``base`` routing ``app`` to alpha, and a proxy config for it."""
    with start_pgbouncer(
        base / "pgbouncer",
        databases={"app": f"host={HOST_A} port={backends.port} dbname=postgres"},
        pool_mode=pool_mode,
        extra_settings=settings,
    ) as bouncer:
        template_path = base / "pgbouncer.ini.template"
        template_path.write_text(template_for(bouncer, backends))
        yield ProxyRig(
            bouncer=bouncer,
            backends=backends,
            etcd=etcd,
            base=base,
            namespace=random_key("proxy").decode(),
            proxy_id="proxy-under-test",
            template_path=template_path,
            config_path=base / "pgcm.toml",
        )


@pytest.fixture
def rig(
    backends: Backends, etcd: EtcdMember, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyRig]:
    """A fresh PgBouncer routing ``app`` to alpha (session pool), and a proxy config for it."""
    # A RELOAD line in the log is how tests see that a RELOAD happened.
    quiet = {"log_connections": "0", "log_disconnections": "0"}
    with proxy_rig(backends, etcd, tmp_path_factory.mktemp("proxy-rig"), "session", quiet) as made:
        yield made


@pytest.fixture
async def store(etcd: EtcdMember) -> AsyncIterator[GatewayStore]:
    """An etcd client for the test itself."""
    async with open_etcd(etcd.settings()) as client:
        yield client


pytestmark = pytest.mark.integration

RELOAD_LINE = "RELOAD command issued"


async def test_key_change_makes_new_client_connections_reach_the_other_server(
    rig: ProxyRig, store: GatewayStore
) -> None:
    rig.write_config()
    first = await store.put(rig.layout.master, HOST_A.encode())
    async with rig.proxy() as proxy:
        with anyio.fail_after(15):
            await rig.wait_ack(store, HOST_A, first)
        assert await rig.client_reaches() == "alpha"
        second = await store.put(rig.layout.master, HOST_B.encode())
        with anyio.fail_after(10):
            ack = await rig.wait_ack(store, HOST_B, second)
        assert ack.revision == second
        assert f"host={HOST_B} port={rig.backends.port}" in rig.ini_path.read_text()
        assert await rig.client_reaches() == "beta"
        assert proxy.saw("pgbouncer.reload_configuration")
        assert await proxy.terminate() == 0


async def test_a_burst_of_changes_converges_on_the_last_and_the_proxy_keeps_running(
    rig: ProxyRig, store: GatewayStore
) -> None:
    rig.write_config()
    first = await store.put(rig.layout.master, HOST_A.encode())
    async with rig.proxy() as proxy:
        with anyio.fail_after(15):
            await rig.wait_ack(store, HOST_A, first)
        # Back to back, without waiting for acks: each new revision cancels the apply
        # (and the ack write) still in flight for the previous one.
        last = first
        for flip in range(40):
            last = await store.put(
                rig.layout.master, (HOST_B if flip % 2 == 0 else HOST_A).encode()
            )
        with anyio.fail_after(20):
            ack = await rig.wait_ack(store, HOST_A, last)
        assert ack.revision == last
        assert await rig.client_reaches() == "alpha"
        assert not proxy.saw("daemon.stopped_unexpectedly")
        assert await proxy.terminate() == 0
    assert temporary_files(rig) == []  # the spare for the next rewrite went with the proxy


def temporary_files(rig: ProxyRig) -> list[Path]:
    return sorted(rig.ini_path.parent.glob(f".{rig.ini_path.name}.*.pgcm-tmp"))


async def test_unchanged_content_sends_no_reload_but_a_change_does(
    rig: ProxyRig, store: GatewayStore
) -> None:
    rig.write_config()
    before = rig.ini_path.read_bytes()
    first = await store.put(rig.layout.master, HOST_A.encode())
    async with rig.proxy() as proxy:
        with anyio.fail_after(15):
            await rig.wait_ack(store, HOST_A, first)
        # The same value again: a new revision to acknowledge, nothing to reload.
        again = await store.put(rig.layout.master, HOST_A.encode())
        with anyio.fail_after(10):
            await rig.wait_ack(store, HOST_A, again)
        assert rig.ini_path.read_bytes() == before
        assert RELOAD_LINE not in rig.bouncer.log_path.read_text(errors="replace")
        changed = await store.put(rig.layout.master, HOST_B.encode())
        with anyio.fail_after(10):
            await rig.wait_ack(store, HOST_B, changed)
        assert rig.bouncer.log_path.read_text(errors="replace").count(RELOAD_LINE) == 1
        assert await proxy.terminate() == 0


HOSTILE_VALUES = [
    b"",
    b" 127.0.0.2",
    b"127.0.0.2\n",
    b"127.0.0.2\nadmin_users = mallory",
    b"127.0.0.2 port=1",
    b"host=127.0.0.2",
    b"'127.0.0.2'",
    b'"127.0.0.2"',
    b"127.0.0.2;",
    b"a" * 254,
    b"evil_host",
    b"10.0.0.256",
    # IPv4 spellings inet_aton reads but PgBouncer's resolver may not: SHOW DATABASES
    # would show the text as written, so only refusing them keeps acks truthful.
    b"0x7f000002",
    b"127.2",
    b"0177.0.0.2",
    "prim\u00e4r".encode(),
    b"\x00",
    b"{{.Host}}",
]


async def test_deleted_key_and_hostile_values_leave_the_ini_byte_identical(
    rig: ProxyRig, store: GatewayStore
) -> None:
    rig.metrics_port = free_tcp_port()
    rig.write_config()
    first = await store.put(rig.layout.master, HOST_A.encode())
    async with rig.proxy() as proxy:
        with anyio.fail_after(15):
            await rig.wait_ack(store, HOST_A, first)
        golden = rig.ini_path.read_bytes()
        for value in HOSTILE_VALUES:
            revision = await store.put(rig.layout.master, value)

            async def refused(revision: int = revision) -> bool:
                return proxy.saw("proxy.primary.rejected", revision=revision)

            with anyio.fail_after(10):
                await eventually(refused)
            assert rig.ini_path.read_bytes() == golden, value
        assert await store.delete(rig.layout.master)
        with anyio.fail_after(10):
            await eventually(
                lambda: _async_true(proxy.saw("proxy.primary.rejected", reason="deleted"))
            )
        assert rig.ini_path.read_bytes() == golden
        ack = await rig.ack(store)
        assert ack is not None
        assert (ack.host, ack.revision) == (HOST_A, first)
        assert RELOAD_LINE not in rig.bouncer.log_path.read_text(errors="replace")
        assert await rig.client_reaches() == "alpha"
        metrics = await anyio.to_thread.run_sync(_scrape, rig.metrics_port)
        assert 'pgcm_proxy_rejected_values_total{reason="deleted"} 1.0' in metrics
        assert 'pgcm_proxy_rejected_values_total{reason="whitespace_or_control"}' in metrics
        assert f'pgcm_proxy_primary_host_info{{host="{HOST_A}"}} 1.0' in metrics
        assert f"pgcm_proxy_applied_revision {float(first)}" in metrics
        # Refused values never become the target: the proxy is not behind etcd's primary.
        assert f"pgcm_proxy_target_revision {float(first)}" in metrics
        assert 'pgcm_build_info{service="pgcm-proxy",version="' in metrics
        assert await proxy.terminate() == 0


async def test_a_missing_ini_is_created_with_the_templates_mode(
    rig: ProxyRig, store: GatewayStore
) -> None:
    # Neither the old fixed 0644 nor the 0640 fallback: the template's own mode.
    rig.write_config()
    rig.template_path.chmod(0o604)
    rig.ini_path.unlink()
    first = await store.put(rig.layout.master, HOST_A.encode())
    async with rig.proxy() as proxy:
        with anyio.fail_after(15):
            await rig.wait_ack(store, HOST_A, first)
        assert stat.S_IMODE(rig.ini_path.stat().st_mode) == 0o604
        assert f"host={HOST_A}" in rig.ini_path.read_text()
        assert await proxy.terminate() == 0


async def _async_true(value: bool) -> bool:  # noqa: FBT001 - adapts a bool for eventually()
    return value


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_broken_template_exits_2_naming_the_line_and_leaves_the_ini_untouched(
    rig: ProxyRig,
) -> None:
    before = rig.ini_path.read_bytes()
    rig.template_path.write_text(rig.template_path.read_text() + "x = {{.Port}}\n")
    rig.write_config()
    result = subprocess.run(
        [str(PROXY_BIN), "run", "--config-file", str(rig.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "pgbouncer_config_template_file" in result.stderr
    assert f"{rig.template_path}:" in result.stderr
    assert "unsupported action '{{.Port}}'" in result.stderr
    assert rig.ini_path.read_bytes() == before


async def test_pgbouncer_down_then_up_converges(rig: ProxyRig, store: GatewayStore) -> None:
    rig.write_config()
    first = await store.put(rig.layout.master, HOST_A.encode())
    async with rig.proxy() as proxy:
        with anyio.fail_after(15):
            await rig.wait_ack(store, HOST_A, first)
        await anyio.to_thread.run_sync(rig.bouncer.process.stop)
        second = await store.put(rig.layout.master, HOST_B.encode())
        with anyio.fail_after(10):
            await eventually(lambda: _async_true(proxy.saw("operation.retry", revision=second)))
        # The file follows at once; only the confirmation waits for PgBouncer.
        assert f"host={HOST_B} " in rig.ini_path.read_text()
        stale = await rig.ack(store)
        assert stale is not None
        assert stale.host == HOST_A
        await anyio.to_thread.run_sync(rig.bouncer.process.start)
        with anyio.fail_after(15):
            await rig.wait_ack(store, HOST_B, second)
        assert await rig.client_reaches() == "beta"
        assert await proxy.terminate() == 0


async def test_ack_appears_with_the_proxy_and_sigterm_revokes_it_and_exits_0(
    rig: ProxyRig, store: GatewayStore
) -> None:
    rig.write_config()
    revision = await store.put(rig.layout.master, HOST_A.encode())
    async with rig.proxy() as proxy:
        with anyio.fail_after(15):
            ack = await rig.wait_ack(store, HOST_A, revision)
        assert ack.proxy_id == rig.proxy_id
        assert ack.pgbouncers == (f"127.0.0.1:{rig.bouncer.port}",)
        with anyio.fail_after(15):
            assert await proxy.terminate() == 0
        assert await rig.ack(store) is None
        assert proxy.saw("shutdown.start")


async def test_ack_of_a_killed_proxy_vanishes_after_the_lease_ttl(
    rig: ProxyRig, store: GatewayStore
) -> None:
    rig.ack_lease_ttl = "2s"
    rig.write_config()
    revision = await store.put(rig.layout.master, HOST_A.encode())
    async with rig.proxy() as proxy:
        with anyio.fail_after(15):
            await rig.wait_ack(store, HOST_A, revision)
        proxy.process.send_signal(signal.SIGKILL)
        with anyio.fail_after(5):
            assert await proxy.process.wait() == -signal.SIGKILL
        assert await rig.ack(store) is not None

        async def gone() -> bool:
            return await rig.ack(store) is None

        with anyio.fail_after(6):
            await eventually(gone)
    # What a proxy killed in the middle of a rewrite leaves behind:
    (rig.ini_path.parent / f".{rig.ini_path.name}.k1ll3d.pgcm-tmp").write_text("half")
    async with rig.proxy() as restarted:
        with anyio.fail_after(15):
            await rig.wait_ack(store, HOST_A, revision)
        assert temporary_files(rig) == []  # removed at start
        assert await restarted.terminate() == 0


async def test_etcd_restarted_mid_watch_is_followed_again(
    rig: ProxyRig, store: GatewayStore, etcd: EtcdMember
) -> None:
    rig.write_config()
    first = await store.put(rig.layout.master, HOST_A.encode())
    async with rig.proxy() as proxy:
        with anyio.fail_after(15):
            await rig.wait_ack(store, HOST_A, first)
        await anyio.to_thread.run_sync(etcd.restart)
        second = await store.put(rig.layout.master, HOST_B.encode())
        with anyio.fail_after(20):
            await rig.wait_ack(store, HOST_B, second)
        assert await rig.client_reaches() == "beta"
        assert await proxy.terminate() == 0


async def test_sigstopped_etcd_is_noticed_and_followed_after_it_resumes(
    rig: ProxyRig, store: GatewayStore, etcd: EtcdMember
) -> None:
    rig.write_config()
    first = await store.put(rig.layout.master, HOST_A.encode())
    async with rig.proxy() as proxy:
        with anyio.fail_after(15):
            await rig.wait_ack(store, HOST_A, first)
        etcd.freeze()
        try:

            async def watch_broke() -> bool:
                return proxy.saw("etcd.watch.error")

            # gRPC keepalive (5 s + 2 s timeout in the rig's config) notices the hang.
            with anyio.fail_after(30):
                await eventually(watch_broke)
        finally:
            etcd.thaw()
        second = await store.put(rig.layout.master, HOST_B.encode())
        with anyio.fail_after(20):
            await rig.wait_ack(store, HOST_B, second)
        assert await rig.client_reaches() == "beta"
        assert await proxy.terminate() == 0


async def test_the_originals_config_file_runs_the_proxy_unchanged(
    rig: ProxyRig, store: GatewayStore
) -> None:
    # The original's flat file with every key it read (supervise's and failover's too:
    # one file served all its commands). The proxy id is not one of the original's
    # settings, so the acknowledgement carries pgcm's default, the host name.
    rig = dataclasses.replace(rig, proxy_id=socket.gethostname())
    original: dict[str, object] = {
        "etcd-namespace": rig.namespace,
        "etcd-postgres-master-key": "/master",
        "etcd-endpoints": [rig.etcd.endpoint],
        "etcd-dial-timeout": "3s",
        "etcd-timeout": "5s",
        "etcd-dial-keep-alive-time": "5s",
        "etcd-keep-alive-time": "30s",
        "etcd-dial-keep-alive-timeout": "3s",
        "etcd-keep-alive-timeout": "5s",
        "etcd-get-timeout": "5s",
        "etcd-stream-poll-interval": "30s",
        "pgbouncer-user": POSTGRES_USER,
        "pgbouncer-password": ADMIN_PASSWORD,
        "pgbouncer-database": "pgbouncer",
        "pgbouncer-socket-dir": "127.0.0.1",
        "pgbouncer-port": str(rig.bouncer.port),
        "pgbouncer-timeout": "1s",
        "pgbouncer-config-file": str(rig.ini_path),
        "pgbouncer-config-template-file": str(rig.template_path),
        "pgbouncer-retry-interval": "5s",
        "pgbouncer-retry-timeout": "500ms",
        "bind-address": ":8080",
        "host-key-update-retry-interval": "1s",
        "pacemaker-poll-interval": "1s",
        "pacemaker-get-timeout": "500ms",
        "postgres-master-crm-xpath": "//node/instance_attributes/nvpair[@value='LATEST']/../..",
        "failover-api-endpoints": ["pg01:8080", "pg02:8080", "pg03:8080"],
        "health-check-timeout": "2s",
        "lock-timeout": "5s",
        "pause-timeout": "5s",
        "pause-expiry": "25s",
        "resume-timeout": "5s",
        "pacemaker-timeout": "20s",
    }
    rig.config_path.write_text(tomli_w.dumps(original))
    first = await store.put(rig.layout.master, HOST_A.encode())
    async with rig.proxy() as proxy:
        with anyio.fail_after(15):
            await rig.wait_ack(store, HOST_A, first)
        second = await store.put(rig.layout.master, HOST_B.encode())
        with anyio.fail_after(10):
            await rig.wait_ack(store, HOST_B, second)
        assert await rig.client_reaches() == "beta"
        assert proxy.saw("config_file.original_format")
        assert proxy.saw(
            "config.keys_ignored",
            keys=[
                "etcd-get-timeout",
                "etcd-keep-alive-time",
                "etcd-keep-alive-timeout",
                "pgbouncer-retry-interval",
                "postgres-master-crm-xpath",
            ],
        )
        assert await proxy.terminate() == 0


DEAD_HOST = "127.0.0.3"  # nothing listens there: a login fails at once (refused)


@pytest.fixture
def slow_retry_rig(
    backends: Backends, etcd: EtcdMember, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyRig]:
    """A rig whose PgBouncer waits an hour after a failed server login (transaction pool)."""
    hour = {"server_login_retry": "3600", "query_wait_timeout": "3600"}
    base = tmp_path_factory.mktemp("proxy-rig-retry")
    with proxy_rig(backends, etcd, base, "transaction", hour) as made:
        yield made


async def test_a_client_waiting_after_a_failed_login_reaches_the_new_primary_at_once(
    slow_retry_rig: ProxyRig, store: GatewayStore
) -> None:
    """The old primary refused the login; PgBouncer would wait server_login_retry (1 h).

    Without the proxy ending that wait after the RELOAD, the client below stays queued
    for an hour and the test fails on its deadline.
    """
    rig = slow_retry_rig
    rig.write_config()
    console = RoutingConsole(rig.bouncer.admin_settings())
    try:
        configured = await console.show_setting("server_login_retry")
        dead = await store.put(rig.layout.master, DEAD_HOST.encode())
        async with rig.proxy() as proxy, anyio.create_task_group() as tg:
            with anyio.fail_after(15):
                await rig.wait_ack(store, DEAD_HOST, dead)
            reached: list[str] = []
            done = anyio.Event()

            async def client() -> None:
                reached.append(await rig.client_reaches())
                done.set()

            tg.start_soon(client)

            async def held_back() -> bool:
                pools = [p for p in await console.show_pools() if p.database == "app"]
                return any(p.cl_waiting > 0 and p.sv_login == 0 for p in pools)

            with anyio.fail_after(15):
                await eventually(held_back)  # queued, its server login refused
            alive = await store.put(rig.layout.master, HOST_B.encode())
            with anyio.fail_after(30):
                await rig.wait_ack(store, HOST_B, alive)
                await done.wait()
            assert reached == ["beta"]
            assert await rig.client_reaches() == "beta"  # a new client is not refused
            assert proxy.saw("pgbouncer.login_backoff.ended", host=HOST_B)
            assert await console.show_setting("server_login_retry") == configured
            assert await proxy.terminate() == 0
    finally:
        await console.aclose()


async def test_a_pool_with_servers_keeps_its_login_retry_setting_untouched(
    slow_retry_rig: ProxyRig, store: GatewayStore
) -> None:
    rig = slow_retry_rig
    rig.write_config()
    first = await store.put(rig.layout.master, HOST_A.encode())
    async with rig.proxy() as proxy:
        with anyio.fail_after(15):
            await rig.wait_ack(store, HOST_A, first)
        assert await rig.client_reaches() == "alpha"
        second = await store.put(rig.layout.master, HOST_B.encode())
        with anyio.fail_after(15):
            await rig.wait_ack(store, HOST_B, second)
        assert await rig.client_reaches() == "beta"
        assert not proxy.saw("pgbouncer.login_backoff.ended")
        assert "SET server_login_retry" not in rig.bouncer.log_path.read_text()
        assert await proxy.terminate() == 0


def hold_record(lost: str, *, hold_s: float = 30) -> bytes:
    """A hold record as supervise writes it when the primary at ``lost`` is lost."""
    since = datetime.now(UTC)
    return HoldRecord(
        lost_node="n1",
        lost_address=lost,
        reason="node n1 is offline",
        since=since,
        deadline=since + timedelta(seconds=hold_s),
        writer="n2",
    ).to_json()


async def test_a_hold_keeps_new_clients_waiting_until_the_new_primary_is_applied(
    slow_retry_rig: ProxyRig, store: GatewayStore
) -> None:
    """The primary at DEAD_HOST is lost: new clients wait, then reach the new one."""
    rig = slow_retry_rig
    rig.write_config()
    lost = await store.put(rig.layout.master, DEAD_HOST.encode())
    async with rig.proxy() as proxy, anyio.create_task_group() as tg:
        with anyio.fail_after(15):
            await rig.wait_ack(store, DEAD_HOST, lost)
        await store.put(rig.layout.hold, hold_record(DEAD_HOST))
        with anyio.fail_after(10):
            await eventually(lambda: _async_true(proxy.saw("proxy.hold.start")))
        reached: list[str] = []
        failed: list[BaseException] = []
        done = anyio.Event()

        async def client() -> None:
            try:
                reached.append(await rig.client_reaches())
            except (OSError, asyncpg.PostgresError) as exc:
                failed.append(exc)
            done.set()

        tg.start_soon(client)
        console = RoutingConsole(rig.bouncer.admin_settings())
        try:

            async def queued() -> bool:
                pools = [p for p in await console.show_pools() if p.database == "app"]
                return any(p.cl_waiting > 0 for p in pools)

            with anyio.fail_after(10):
                await eventually(queued)  # held in PgBouncer, no server login tried
        finally:
            await console.aclose()
        assert not done.is_set(), f"the client was not held: {failed}"
        moved = await store.put(rig.layout.master, HOST_B.encode())
        with anyio.fail_after(15):
            await rig.wait_ack(store, HOST_B, moved)
            await done.wait()
        assert (reached, failed) == (["beta"], [])
        with anyio.fail_after(10):
            await eventually(lambda: _async_true(proxy.saw("proxy.hold.end", outcome="applied")))
        assert await rig.client_reaches() == "beta"
        assert await proxy.terminate() == 0


async def test_a_hold_that_runs_out_resumes_pgbouncer_and_nothing_stays_paused(
    rig: ProxyRig, store: GatewayStore
) -> None:
    rig.write_config(hold_limit="1s")
    first = await store.put(rig.layout.master, HOST_A.encode())
    async with rig.proxy() as proxy:
        with anyio.fail_after(15):
            await rig.wait_ack(store, HOST_A, first)
        await store.put(rig.layout.hold, hold_record(HOST_A))
        with anyio.fail_after(15):
            await eventually(lambda: _async_true(proxy.saw("proxy.hold.end", outcome="expired")))
        # RESUMEd: a new client is served by the same (still published) primary.
        with anyio.fail_after(10):
            assert await rig.client_reaches() == "alpha"
        assert await proxy.terminate() == 0


async def test_a_proxy_killed_while_holding_resumes_pgbouncer_when_it_starts_again(
    rig: ProxyRig, store: GatewayStore
) -> None:
    rig.write_config()
    first = await store.put(rig.layout.master, HOST_A.encode())
    async with rig.proxy() as proxy:
        with anyio.fail_after(15):
            await rig.wait_ack(store, HOST_A, first)
        await store.put(rig.layout.hold, hold_record(HOST_A))
        with anyio.fail_after(10):
            await eventually(lambda: _async_true(proxy.saw("proxy.hold.start")))
        proxy.process.kill()  # no clean-up: PgBouncer stays paused
        await proxy.process.wait()
    await store.delete(rig.layout.hold)  # the primary recovered meanwhile
    async with rig.proxy() as again:
        with anyio.fail_after(15):
            # The killed proxy's ack outlives it (its lease): wait for this one's start.
            await eventually(lambda: _async_true(again.saw("proxy.ready")))
            assert await rig.client_reaches() == "alpha"
        assert await again.terminate() == 0
