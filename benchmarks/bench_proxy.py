"""pgcm-proxy: etcd put -> pgbouncer.ini rewritten -> PgBouncer routing, RSS, idle CPU.

Starts its own etcd, two PostgreSQL servers (127.0.0.1:P and 127.0.0.2:P), a
PgBouncer and ``pgcm-proxy run`` as a subprocess (installed alone from its wheel and
started with its systemd unit's environment, as deployed: :mod:`deployed`),
then flips the primary's key between the two hosts ``CHANGES`` times. For each change:

* put_ms: the etcd put's round trip, seen by the writer;
* file_ms: from just before the put until pgbouncer.ini is replaced (inotify reports
  the rename of the proxy's new file over the old one);
* routing_ms: until ``SHOW DATABASES`` on the admin console routes to the new host (the
  harness asks over one kept connection: opening one per question cost it 2.5 ms each).

The harness must not compete with what it measures: the writer sends each put from a
thread of its own (plain ``http.client`` to etcd's JSON gateway) and the harness then
sleeps in inotify until the rename,
which it sees the moment it happens even when the put's reply is still in flight.
(Polling stat() every 50 us, as this benchmark first did, took enough of the two
cores to add about 0.5 ms at p50.) pgcm's own asyncio etcd client's put round trip
is reported beside it, as ``pgcm_client_put``, over as many puts to a scratch key.

Against the same etcd, in the same run, the same harness measures
``go_reference/main.go`` (built when ``golang-go`` and ``golang-etcd-server-dev`` are
installed): a minimal Go watcher that writes the rendered file in place as the original
did, with none of pgcm-proxy's validation, atomic replace, fsync, RELOAD or
acknowledgement. Its put -> file written is the floor a Go proxy has on this machine
that day. Both run throughout and take turns, change by change, each on its own key:
the VM's speed drifts by a millisecond between runs a minute apart (other tenants,
memory reclaim), and measuring one after the other made that drift look like a
difference between the two.

After each pgcm change the harness waits for the acknowledgement, so changes never
overlap. Afterwards the proxy's
RSS is read from /proc, and its CPU time over ``IDLE_S`` seconds of idleness.
"""

from __future__ import annotations

import base64
import ctypes
import http.client
import json
import os
import select
import shutil
import statistics
import struct
import subprocess
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import anyio
import tomli_w
from deployed import deployed_script, terminate, unit_environment

from pgcm_common.etcd import EtcdStore, open_etcd
from pgcm_common.pgbouncer import RoutingConsole
from pgcm_common.records import KeyLayout, ProxyAck
from pgcm_testkit.etcd import EtcdCluster, start_etcd
from pgcm_testkit.pgbouncer import ADMIN_PASSWORD, start_pgbouncer
from pgcm_testkit.postgres import start_postgres
from pgcm_testkit.process import POSTGRES_USER, free_tcp_port, make_world_traversable

DESCRIPTION = (
    "pgcm-proxy: etcd put -> pgbouncer.ini rewritten -> PgBouncer routes to the new host "
    "(SHOW DATABASES), plus the proxy's RSS and idle CPU."
)
CHANGES = 1000
GO_REFERENCE = Path(__file__).parent / "go_reference" / "main.go"
GO_ETCD_CLIENT = Path("/usr/share/gocode/src/go.etcd.io/etcd/clientv3")
GO_KEY = b"/bench-go/master"
IDLE_S = 20.0
HOSTS = ("127.0.0.1", "127.0.0.2")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _summary(prefix: str, values: list[float]) -> dict[str, float]:
    return {
        f"{prefix}_p50_ms": round(statistics.median(values), 3),
        f"{prefix}_p99_ms": round(percentile(values, 0.99), 3),
        f"{prefix}_max_ms": round(max(values), 3),
    }


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmRSS")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


class LeanWriter:
    """etcd puts over one kept HTTP/1.1 connection to etcd's JSON gateway, from a thread.

    The benchmark's writer (module docstring): plain ``http.client`` on a thread of its
    own, so the harness's event loop and the measured proxy do not share its work.
    """

    def __init__(self, endpoint: str) -> None:
        host, _, port = endpoint.removeprefix("http://").rpartition(":")
        self._connection = http.client.HTTPConnection(host, int(port), timeout=10)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lean-writer")

    def _put(self, key: bytes, value: bytes) -> tuple[int, float]:
        body = json.dumps(
            {"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()}
        )
        self._connection.request("POST", "/v3/kv/put", body, {"Content-Type": "application/json"})
        response = self._connection.getresponse()
        reply = json.loads(response.read())
        arrived = time.perf_counter()
        if response.status != 200:  # noqa: PLR2004 - HTTP OK
            raise RuntimeError(f"etcd put failed: {reply}")
        return int(reply["header"]["revision"]), arrived

    def put(self, key: bytes, value: bytes) -> int:
        """Put ``value`` at ``key``; return the revision etcd committed it at."""
        return self.put_async(key, value).result()[0]

    def put_async(self, key: bytes, value: bytes) -> Future[tuple[int, float]]:
        """Send the put; the future gives its revision and when its reply arrived.

        The reply time is taken on the writer's thread as the reply lands, so waiting
        for the file in the meantime does not delay it (nor the other way round).
        """
        return self._thread.submit(self._put, key, value)

    def close(self) -> None:
        """Close the connection and the thread."""
        self._thread.shutdown()
        self._connection.close()


class _FileEvents:
    """Files renamed into (or written and closed in) a directory, from inotify.

    The harness sleeps until the file lands: blocking on inotify takes no CPU while the
    proxy works (polling stat() did, on the two cores the whole measured pipeline
    shares) and wakes the moment the rename (or the close after an in-place write) is
    done.
    """

    MOVED_TO = 0x80  # pgcm-proxy writes a temporary file and renames it
    CLOSE_WRITE = 0x8  # the Go reference writes in place, as the original did
    _HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len

    def __init__(self, directory: Path, mask: int) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._fd = libc.inotify_init1(os.O_CLOEXEC)
        if self._fd < 0 or libc.inotify_add_watch(self._fd, os.fsencode(directory), mask) < 0:
            raise OSError(ctypes.get_errno(), "inotify on the benchmark directory")

    def drain(self) -> None:
        """Forget renames seen so far (none is expected between two changes)."""
        while select.select([self._fd], [], [], 0)[0]:
            os.read(self._fd, 4096)

    def wait(self, name: str, *, timeout_s: float) -> bool:
        """Return True once the watched event happened to ``name``, False on timeout."""
        deadline = time.monotonic() + timeout_s
        wanted = os.fsencode(name)
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self._fd], [], [], left)
            if not readable:
                break
            buffer = os.read(self._fd, 4096)
            offset = 0
            while offset < len(buffer):
                _, _, _, length = self._HEADER.unpack_from(buffer, offset)
                offset += self._HEADER.size
                if buffer[offset : offset + length].rstrip(b"\0") == wanted:
                    return True
                offset += length
        return False

    def close(self) -> None:
        """Stop watching."""
        os.close(self._fd)


async def _pgcm_client_put_ms(store: EtcdStore, key: bytes) -> list[float]:
    """Round trips of pgcm's own etcd client, for comparison with the lean writer."""
    round_trips = []
    for i in range(CHANGES):
        started = time.perf_counter()
        await store.put(key, str(i).encode())
        round_trips.append((time.perf_counter() - started) * 1000)
    return round_trips


class ProxyUnderTest:
    """pgcm-proxy as the harness drives it: put, see the file land, routing, ack."""

    def __init__(
        self, ini: Path, admin: RoutingConsole, store: EtcdStore, namespace: str = "/bench"
    ) -> None:
        self._ini = ini
        self._admin = admin
        self._store = store
        self._layout = KeyLayout(namespace)
        self._ack_key = self._layout.proxy_ack("bench")
        self._renames = _FileEvents(ini.parent, _FileEvents.MOVED_TO)

    async def first_apply(self, writer: LeanWriter) -> None:
        """Put the first host and wait until the proxy acknowledged it."""
        revision = writer.put(self._layout.master, HOSTS[0].encode())
        with anyio.fail_after(30):
            await self._acked(revision)

    async def change(self, writer: LeanWriter, host: str, index: int) -> tuple[float, ...]:
        """Move the primary to ``host``; return put, file and routing times in ms."""
        self._renames.drain()
        started = time.perf_counter()
        put = writer.put_async(self._layout.master, host.encode())
        if not self._renames.wait(self._ini.name, timeout_s=10):
            raise TimeoutError(f"change {index}: pgbouncer.ini not rewritten")
        written = time.perf_counter()
        revision, put_done = put.result(timeout=10)
        with anyio.fail_after(10):
            while not any(
                r.name == "app" and r.host == host for r in await self._admin.show_databases()
            ):
                pass
        routed = time.perf_counter()
        with anyio.fail_after(10):
            await self._acked(revision)
        return tuple((t - started) * 1000 for t in (put_done, written, routed))

    async def _acked(self, revision: int) -> None:
        while True:
            kv = await self._store.get(self._ack_key)
            if kv is not None and ProxyAck.from_json(self._ack_key, kv.value).revision >= revision:
                return
            await anyio.sleep(0.001)

    def close(self) -> None:
        """Stop the inotify watch."""
        self._renames.close()


async def _idle_cpu_percent(pid: int) -> float:
    before = _cpu_seconds(pid)
    idle_started = time.monotonic()
    await anyio.sleep(IDLE_S)
    return (_cpu_seconds(pid) - before) / (time.monotonic() - idle_started) * 100


async def _measure(
    ini: Path, admin: RoutingConsole, etcd: EtcdCluster, proxy_pid: int, go: _GoWatcher | None
) -> dict[str, object]:
    pgcm: list[tuple[float, ...]] = []
    go_ms: list[float] = []
    writer = LeanWriter(etcd.endpoints[0])
    async with open_etcd(etcd.settings()) as store:
        proxy = ProxyUnderTest(ini, admin, store)
        await proxy.first_apply(writer)
        if go is not None:
            go.wait_until_watching(writer)
        for i in range(CHANGES):
            host = HOSTS[(i + 1) % 2]
            # Alternate who goes first, so neither always follows the other's change.
            if go is not None and i % 2:
                go_ms.append(go.change(writer, host, i))
            pgcm.append(await proxy.change(writer, host, i))
            if go is not None and not i % 2:
                go_ms.append(go.change(writer, host, i))
        proxy.close()
        await admin.aclose()
        pgcm_put_ms = await _pgcm_client_put_ms(store, b"/bench-scratch")
    writer.close()
    rss = _rss_mb(proxy_pid)
    idle_cpu = await _idle_cpu_percent(proxy_pid)
    put_ms, file_ms, routing_ms = (list(column) for column in zip(*pgcm, strict=True))
    go_results: dict[str, object] = {
        "go_reference": "skipped: install golang-go and golang-etcd-server-dev"
    }
    if go is not None:
        paired = [mine - theirs for mine, theirs in zip(file_ms, go_ms, strict=True)]
        go_results = {
            **_summary("go_reference_file_written", go_ms),
            # The verdict on "no slower than Go": the same changes, side by side.
            "pgcm_minus_go_file_median_of_pairs_ms": round(statistics.median(paired), 3),
            "pgcm_minus_go_file_p99_ms": round(
                percentile(file_ms, 0.99) - percentile(go_ms, 0.99), 3
            ),
        }
    return {
        "changes": CHANGES,
        **_summary("put", put_ms),
        **_summary("pgcm_client_put", pgcm_put_ms),
        **_summary("file_rewritten", file_ms),
        **_summary("routing_confirmed", routing_ms),
        **go_results,
        "rss_mb": rss,
        "idle_s": IDLE_S,
        "idle_cpu_percent": round(idle_cpu, 3),
        "targets": {
            "file_rewritten_p99_ms": "<= 2 (Go original: p50 1.3, p99 2.0-2.2)",
            "go_reference_file_written_p99_ms": "same run, minimal Go watcher (go_reference/)",
            "pgcm_minus_go_file_median_of_pairs_ms": "<= 0 (no slower than Go, change by change)",
            "rss_mb": "<= 60",
            "idle_cpu_percent": "<= 0.5",
        },
    }


@dataclass(frozen=True, slots=True)
class RunningProxy:
    """A pgcm-proxy process with its own PgBouncer, as the harness drives it."""

    process: subprocess.Popen[bytes]
    ini_path: Path
    template: Path
    console: RoutingConsole


def start_backends(stack: ExitStack, base: Path) -> tuple[EtcdCluster, int]:
    """Start etcd and the two PostgreSQL servers (127.0.0.1:P, 127.0.0.2:P); return etcd, P."""
    # etcd's data on tmpfs: its WAL fsync (several ms on this VM's disk) is etcd's cost,
    # not the proxy's, and would hide what this benchmark is about.
    shm = Path(stack.enter_context(tempfile.TemporaryDirectory(dir="/dev/shm")))
    cluster = stack.enter_context(start_etcd(shm / "etcd"))
    port = free_tcp_port()
    stack.enter_context(start_postgres(base / "pg-a", port=port, name="alpha"))
    stack.enter_context(
        start_postgres(
            base / "pg-b", port=port, name="beta", extra_settings={"listen_addresses": HOSTS[1]}
        )
    )
    return cluster, port


def start_proxy(
    stack: ExitStack,
    work: Path,
    cluster: EtcdCluster,
    port: int,
    *,
    binary: Path,
    namespace: str = "/bench",
) -> RunningProxy:
    """Start a PgBouncer routing ``app`` to HOSTS[0] and ``binary`` (pgcm-proxy) for it.

    The proxy runs with its systemd unit's environment and is stopped when ``stack``
    closes.
    """
    work.mkdir()
    route = f"host={HOSTS[0]} port={port} dbname=postgres"
    bouncer = stack.enter_context(start_pgbouncer(work / "pgbouncer", databases={"app": route}))
    template = work / "pgbouncer.ini.template"
    template.write_text(
        bouncer.ini_path.read_text().replace(f"host={HOSTS[0]} ", "host={{.Host}} ")
    )
    config = work / "pgcm.toml"
    config.write_text(
        tomli_w.dumps(
            {
                "proxy": {
                    "pgbouncer_config_file": str(bouncer.ini_path),
                    "pgbouncer_config_template_file": str(template),
                    "proxy_id": "bench",
                },
                "cluster": {"namespace": namespace},
                "etcd": {"endpoints": cluster.endpoints},
                "pgbouncer": {
                    "host": "127.0.0.1",
                    "port": bouncer.port,
                    "user": POSTGRES_USER,
                    "password": ADMIN_PASSWORD,
                },
            }
        )
    )
    log = stack.enter_context((work / "proxy.log").open("wb"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGCM_")}
    env |= unit_environment("pgcm-proxy")
    process = subprocess.Popen(
        [str(binary), "--log-format", "json", "run", "--config-file", str(config)],
        stdout=log,
        stderr=log,
        env=env,
    )
    stack.callback(terminate, process)
    return RunningProxy(
        process, bouncer.ini_path, template, RoutingConsole(bouncer.admin_settings())
    )


def run() -> dict[str, object]:
    """Start the servers and the proxy, measure, stop everything; return the numbers."""
    with ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pgcm-bench-proxy-")))
        make_world_traversable(base)
        cluster, port = start_backends(stack, base)
        proxy = start_proxy(
            stack, base / "proxy", cluster, port, binary=deployed_script("pgcm-proxy")
        )
        go = _GoWatcher.start(cluster.endpoints[0], base / "go", proxy.template)
        if go is not None:
            stack.callback(go.close)
        return anyio.run(_measure, proxy.ini_path, proxy.console, cluster, proxy.process.pid, go)


class _GoWatcher:
    """``go_reference/main.go``, built and running, and how its file writes are seen."""

    def __init__(self, process: subprocess.Popen[bytes], output: Path) -> None:
        self._process = process
        self._output = output
        self._events = _FileEvents(output.parent, _FileEvents.CLOSE_WRITE)

    @classmethod
    def start(cls, endpoint: str, work: Path, template: Path) -> _GoWatcher | None:
        """Build and start the watcher; None without the Go toolchain or etcd sources.

        Needs ``golang-go`` and ``golang-etcd-server-dev`` (the nox session installs them).
        """
        if shutil.which("go") is None or not GO_ETCD_CLIENT.is_dir():
            return None
        work.mkdir()
        binary = work / "gowatch"
        subprocess.run(
            ["go", "build", "-o", str(binary), str(GO_REFERENCE)],
            env=os.environ | {"GO111MODULE": "off", "GOPATH": "/usr/share/gocode",
                              "GOCACHE": str(work / "cache")},
            check=True,
        )  # fmt: skip
        output = work / "pgbouncer.ini"
        process = subprocess.Popen(
            [str(binary), endpoint, GO_KEY.decode(), str(template), str(output)]
        )
        return cls(process, output)

    def wait_until_watching(self, writer: LeanWriter) -> None:
        """Put until a write shows the watch is in place (it is set up asynchronously)."""
        for _ in range(40):
            if self._process.poll() is not None:
                raise RuntimeError(f"the Go reference exited with {self._process.returncode}")
            writer.put(GO_KEY, HOSTS[0].encode())
            if self._events.wait(self._output.name, timeout_s=0.5):
                return
        raise TimeoutError("the Go reference wrote nothing within 20 s")

    def change(self, writer: LeanWriter, host: str, index: int) -> float:
        """Put ``host`` at the Go watcher's key; return put -> file written, in ms."""
        self._events.drain()
        started = time.perf_counter()
        put = writer.put_async(GO_KEY, host.encode())
        if not self._events.wait(self._output.name, timeout_s=10):
            raise TimeoutError(f"Go reference, change {index}: file not written")
        written_ms = (time.perf_counter() - started) * 1000
        put.result(timeout=10)
        return written_ms

    def close(self) -> None:
        """Stop the watcher and the inotify watch."""
        terminate(self._process)
        self._events.close()
