# ruff: noqa: ASYNC110  # polling other processes' state: there is no event to await
"""pgcm end to end: supervise, proxy and failover as real processes in the 3-node lab.

One lab (with pgcm) serves every test; they run in file order and each leaves the
cluster healthy for the next. The destructive ones (a SIGKILLed pgcm-failover, a killed
node) come last. Measured numbers (paused time, max latency, promotion -> etcd ->
last proxy ack) are printed and merged into ``benchmarks/results/e2e.json``; nothing
here asserts on them.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, final

import anyio
import pytest
import pytest_asyncio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from pgcm_lab.lab import Lab, Service
from pgcm_lab.pgcm import (
    MASTER_KEY,
    NAMESPACE,
    TOKEN,
    etcd_get,
    etcd_get_prefix,
    failover_argv,
    venv_script,
    wait_pgcm_ready,
)
from pgcm_lab.testing import (
    address,
    bouncer_answers,
    promotion_latencies,
    routed_host,
    run_failover,
)
from pgcm_lab.topology import APP_NODE, CLONE

pytestmark = [
    pytest.mark.lab,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(300),
]

RESULTS: Final = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "e2e.json"
PREFER: Final = f"cli-prefer-{CLONE}"


# --------------------------------------------------------------------------- helpers
def _dict(value: object) -> dict[str, object]:
    assert isinstance(value, dict), value
    return {str(k): v for k, v in value.items()}


def _list(value: object) -> list[object]:
    assert isinstance(value, list), value
    return value


async def status(lab: Lab) -> dict[str, object]:
    """``pgcm-failover status --json``."""
    run = await run_failover(lab, "status")
    assert run.returncode == 0, run.logs[-2000:]
    return run.data


def live_nodes(lab: Lab) -> list[str]:
    """Every running node (Postgres nodes and the app node)."""
    return lab.running_nodes()


async def wait_everything_routes_to(lab: Lab, node: str) -> None:
    """Wait (caller bounds it) until etcd, every ack and every PgBouncer name ``node``."""
    await wait_pgcm_ready(lab, node)
    want = address(lab, node)
    for name in live_nodes(lab):
        while await routed_host(lab, name) != want:
            await anyio.sleep(0.1)


def record(key: str, value: object) -> None:
    """Merge ``key: value`` into the e2e benchmark results, and print it."""
    print(f"\n[e2e] {key}: {json.dumps(value, indent=2)}")  # noqa: T201  # the report
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(RESULTS.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        data = {}
    data[key] = value
    data[f"{key}_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def pause_held_for(lab: Lab, node: str) -> float:
    """Seconds from the last PAUSE to the expiry's RESUME in node ``node``'s supervise log."""
    paused_at = expired_at = None
    log = lab.node_dir(node) / "services" / "pgcm-supervise.log"
    for line in log.read_text(errors="replace").splitlines():
        event = _dict(json.loads(line)) if line.startswith("{") else {}
        if event.get("event") == "clients.pgbouncer.pause" and event.get("outcome") == "paused":
            paused_at, expired_at = datetime.fromisoformat(str(event["ts"])), None
        elif event.get("event") == "pause.expiry" and paused_at is not None:
            expired_at = datetime.fromisoformat(str(event["ts"]))
    assert paused_at is not None, f"{node}: no PAUSE in {log}"
    assert expired_at is not None, f"{node}: the pause did not expire"
    return round((expired_at - paused_at).total_seconds(), 3)


@final
class PsqlSession:
    """One client connection through a PgBouncer: psql in the app node's network."""

    def __init__(self, process: Process) -> None:
        self._process = process
        assert process.stdout is not None
        self._reader = BufferedByteReceiveStream(process.stdout)
        self._n = 0

    async def query(self, sql: str) -> list[str]:
        """Send ``sql`` and return psql's output lines (caller bounds it)."""
        self._n += 1
        sql = sql.strip()
        sql = sql if sql.endswith(";") else f"{sql};"  # else psql waits for the rest
        marker = f"-- end {self._n} --"
        assert self._process.stdin is not None
        await self._process.stdin.send(f"{sql}\n\\echo '{marker}'\n".encode())
        lines = []
        while (line := (await self._reader.receive_until(b"\n", 65536)).decode()) != marker:
            lines.append(line)
        return lines


@asynccontextmanager
async def psql_session(lab: Lab, host: str) -> AsyncIterator[PsqlSession]:
    """A psql connected to the PgBouncer at ``host:6432`` (stdio line-buffered)."""
    pid = lab.init_pid(APP_NODE)
    argv = ["nsenter", "-t", str(pid), "-n", "--", "stdbuf", "-oL", "-eL", "psql", "-X",
            "-qAt", "-h", host, "-p", "6432", "-U", "postgres", "-d", "postgres"]  # fmt: skip
    process = await anyio.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        yield PsqlSession(process)
    finally:
        with anyio.move_on_after(5, shield=True):
            assert process.stdin is not None
            await process.stdin.aclose()
            await process.wait()
        if process.returncode is None:
            process.kill()
            with anyio.move_on_after(5, shield=True):
                await process.wait()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(lab: Lab) -> AsyncIterator[PsqlSession]:
    """One client connection through the app node's PgBouncer, kept across tests 2 and 3."""
    async with psql_session(lab, address(lab, APP_NODE)) as session:
        yield session


# --------------------------------------------------------------------------- tests
async def test_etcd_names_the_promoted_node_and_every_pgbouncer_routes_to_it(lab: Lab) -> None:
    with anyio.fail_after(60):
        primary = await lab.wait_healthy()
        await wait_everything_routes_to(lab, primary)
        assert await etcd_get(lab, f"{NAMESPACE}{MASTER_KEY}") == address(lab, primary)
        hosts = {name: await routed_host(lab, name) for name in live_nodes(lab)}
        statuses = await etcd_get_prefix(lab, f"{NAMESPACE}/supervise/")
    assert hosts == dict.fromkeys(["n1", "n2", "n3", APP_NODE], address(lab, primary))
    # Each node's supervise publishes the real primary in its NodeStatus.
    seen = {key.rsplit("/", 1)[1]: _dict(json.loads(v))["primary"] for key, v in statuses.items()}
    assert seen == dict.fromkeys(["n1", "n2", "n3"], primary)


_GRPC_PROBE = """
import asyncio, sys
from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from pgcm_common.proto.failover import Empty, FailoverStub

async def main(host, token):
    channel = Channel(host, 8080)
    metadata = {"authorization": "Bearer " + token} if token else None
    try:
        await FailoverStub(channel).health_check(Empty(), metadata=metadata, timeout=10)
        print("OK")
    except GRPCError as exc:
        print(exc.status.name)
    finally:
        channel.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_supervise_refuses_calls_without_the_right_token(lab: Lab) -> None:
    pid = lab.init_pid(APP_NODE)
    python = str(Path(venv_script("pgcm-failover")).parent / "python")
    answers = {}
    with anyio.fail_after(60):
        for token in ("", "wrong-token", "pgcm-lab-token"):
            argv = ["nsenter", "-t", str(pid), "-n", "--", python, "-c", _GRPC_PROBE,
                    address(lab, "n1"), token]  # fmt: skip
            answers[token] = (await lab.run(argv)).stdout.strip()
    assert answers == {
        "": "UNAUTHENTICATED",
        "wrong-token": "UNAUTHENTICATED",
        "pgcm-lab-token": "OK",
    }


_TLS_PROBE = """
import asyncio, ssl, sys
from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from pgcm_common.proto.failover import Empty, FailoverStub

async def main(host, port, mode, ca, token):
    context = None
    if mode != "plain":
        context = ssl.create_default_context(cafile=ca if mode == "tls-ca" else None)
        context.set_alpn_protocols(["h2"])
    channel = Channel(host, int(port), ssl=context)
    metadata = {"authorization": "Bearer " + token} if token else None
    try:
        await FailoverStub(channel).health_check(Empty(), metadata=metadata, timeout=5)
        print("OK")
    except GRPCError as exc:
        print(exc.status.name)
    except Exception as exc:
        print("refused:" + type(exc).__name__)
    finally:
        channel.close()

asyncio.run(main(*sys.argv[1:]))
"""


async def _tls_certificates(lab: Lab, directory: Path, ip: str) -> None:
    """A throw-away CA and a server certificate for ``ip`` (openssl)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "san.ext").write_text(f"subjectAltName=IP:{ip}\n", encoding="utf-8")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    d = str(directory)
    for argv in (
        ["openssl", "req", "-x509", *ec, "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.crt",
         "-days", "1", "-subj", "/CN=pgcm-lab-e2e-ca"],
        ["openssl", "req", *ec, "-keyout", f"{d}/server.key", "-out", f"{d}/server.csr",
         "-subj", f"/CN={ip}"],
        ["openssl", "x509", "-req", "-in", f"{d}/server.csr", "-CA", f"{d}/ca.crt", "-CAkey",
         f"{d}/ca.key", "-CAcreateserial", "-out", f"{d}/server.crt", "-days", "1",
         "-extfile", f"{d}/san.ext"],
    ):  # fmt: skip
        await lab.run(argv)


async def test_supervise_with_tls_refuses_plain_text_and_untrusted_clients(lab: Lab) -> None:
    node = "n3"
    ip = address(lab, node)
    certs = lab.state_dir / "tls"
    with anyio.fail_after(60):
        await _tls_certificates(lab, certs, ip)
        # A second supervise on n3, on its own port and namespace, serving TLS + token.
        await lab.start_service(
            Service(
                name="pgcm-supervise-tls",
                node=node,
                argv=(venv_script("pgcm-supervise"), "run", "--config-file",
                      str(lab.node_dir(node) / "pgcm.toml"), "--bind-address", f"{ip}:8443",
                      "--tls-cert-file", str(certs / "server.crt"), "--tls-key-file",
                      str(certs / "server.key"), "--cluster-namespace", "/pgcm-tls-e2e",
                      "--nudge-socket", "/run/pgcm/supervise-tls.sock"),
            )
        )  # fmt: skip
        pid = lab.init_pid(APP_NODE)
        python = str(Path(venv_script("pgcm-failover")).parent / "python")

        async def probe(mode: str, token: str) -> str:
            argv = ["nsenter", "-t", str(pid), "-n", "--", python, "-c", _TLS_PROBE, ip,
                    "8443", mode, str(certs / "ca.crt"), token]  # fmt: skip
            return (await lab.run(argv)).stdout.strip()

        while await probe("tls-ca", TOKEN) != "OK":
            await anyio.sleep(0.2)
        answers = {
            "plain text": await probe("plain", TOKEN),
            "untrusted certificate": await probe("tls-system", TOKEN),
            "trusted, no token": await probe("tls-ca", ""),
        }
    assert answers["trusted, no token"] == "UNAUTHENTICATED"
    assert answers["plain text"] != "OK"
    assert answers["untrusted certificate"].startswith("refused:"), answers


async def test_open_transaction_blocks_pause_and_the_switchover_rolls_back(
    lab: Lab, client: PsqlSession
) -> None:
    with anyio.fail_after(90):
        primary = await lab.wait_healthy()
        target = next(n.name for n in lab.topology.others(primary))
        assert await client.query("select 1") == ["1"]
        # Start the switchover, and open the transaction once pgcm-failover runs: the
        # pre-flight refuses transactions older than the pause timeout, and this test is
        # about PAUSE itself being blocked.
        argv = failover_argv(lab, ["--yes", "--target", target, "--pause-timeout", "1s", "--json"])
        process = await anyio.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        async with process:
            assert process.stderr is not None
            errors = BufferedByteReceiveStream(process.stderr)
            logs = [await errors.receive_until(b"\n", 1 << 20)]
            while b"config_file.loaded" not in logs[-1]:
                logs.append(await errors.receive_until(b"\n", 1 << 20))
            assert await client.query("begin; select 42;") == ["42"]
            async with anyio.create_task_group() as tg:

                async def drain() -> None:
                    try:
                        while True:
                            logs.append(await errors.receive_until(b"\n", 1 << 20))
                    except (anyio.EndOfStream, anyio.IncompleteRead):
                        return

                tg.start_soon(drain)
                assert process.stdout is not None
                out = b"".join([chunk async for chunk in process.stdout])
                await process.wait()
        report = _dict(json.loads(out))
        assert process.returncode == 1, b"".join(logs).decode()[-3000:]
        assert report["outcome"] == "rolled_back"
        failed = [_dict(p)["name"] for p in _list(report["phases"]) if not _dict(p)["ok"]]
        assert failed == ["pause"], report
        # Everything is as before: resumed, no constraint, lock free, same primary.
        after = await status(lab)
        assert after["lock"] is None
        assert after["move_constraints"] == []
        assert _dict(after["etcd_primary"])["node"] == primary
        assert await lab.primary() == primary
        for name in live_nodes(lab):
            assert await bouncer_answers(lab, name), f"{name}'s PgBouncer is still paused"
        assert await client.query("commit;") == []


async def test_after_the_transaction_ends_the_same_connection_reaches_the_new_primary(
    lab: Lab, client: PsqlSession
) -> None:
    with anyio.fail_after(120):
        primary = await lab.wait_healthy()
        assert await client.query("select pg_is_in_recovery(), inet_server_addr();") == [
            f"f|{address(lab, primary)}"
        ]
        run = await run_failover(lab, "--yes")
        assert run.returncode == 0, run.logs[-3000:]
        target = str(_dict(run.data["target"])["node"])
        assert target != primary
        await wait_everything_routes_to(lab, target)
        lines = await client.query("select pg_is_in_recovery(), inet_server_addr();")
        latencies = await promotion_latencies(lab, target)
    assert lines == [f"f|{address(lab, target)}"]
    record(
        "switchover_idle",
        {
            "paused_seconds": run.data["paused_seconds"],
            "total_seconds": run.data["total_seconds"],
            **latencies,
        },
    )


async def test_switchover_under_pgbench_has_zero_failed_transactions(lab: Lab) -> None:
    with anyio.fail_after(150):
        primary = await lab.wait_healthy()
        await lab.exec(primary, ["pgbench", "-i", "-q", "-s", "1", "-h", "/run/postgresql",
                                 "postgres"], user="postgres")  # fmt: skip
        results: dict[str, object] = {}

        async def load() -> None:
            results["load"] = await lab.load(seconds=20, clients=4)

        async with anyio.create_task_group() as tg:
            tg.start_soon(load)
            # Switch once every pgbench client is connected through the app PgBouncer.
            while await _app_clients(lab) < 4:  # the 4 pgbench clients
                await anyio.sleep(0.1)
            run = await run_failover(lab, "--yes")
            results["run"] = run
        report = results["load"]
        assert run.returncode == 0, run.logs[-3000:]
        latencies = await promotion_latencies(lab, str(_dict(run.data["target"])["node"]))
    from pgcm_lab.load import LoadReport  # noqa: PLC0415  # only for the type check

    assert isinstance(report, LoadReport)
    record(
        "switchover_under_load",
        {
            "paused_seconds": run.data["paused_seconds"],
            "total_seconds": run.data["total_seconds"],
            "phases": run.data["phases"],
            "clients": report.as_dict(),
            **latencies,
        },
    )
    assert report.transactions > 0
    assert report.failed_transactions == 0, report.errors
    assert report.aborted_clients == 0, report.errors
    assert report.clean, report.errors


async def _app_clients(lab: Lab) -> int:
    argv = ["psql", "-X", "-h", "/run/pgbouncer", "-p", "6432", "-U", "postgres", "-d",
            "pgbouncer", "-qAt", "-c", "SHOW CLIENTS"]  # fmt: skip
    out = await lab.exec(APP_NODE, argv, user="postgres")
    return sum(1 for line in out.stdout.splitlines() if "pgbench" in line.split("|"))


async def test_switchovers_to_each_node_in_turn_all_succeed(lab: Lab) -> None:
    seen: list[dict[str, object]] = []
    with anyio.fail_after(240):
        primary = await lab.wait_healthy()
        names = [n.name for n in lab.topology.nodes]
        start = names.index(primary)
        for target in names[start + 1 :] + names[: start + 1]:
            await lab.wait_healthy()
            run = await run_failover(lab, "--yes", "--target", target)
            assert run.returncode == 0, run.logs[-3000:]
            assert _dict(run.data["target"])["node"] == target
            await wait_everything_routes_to(lab, target)
            seen.append(
                {
                    "target": target,
                    "paused_seconds": run.data["paused_seconds"],
                    **await promotion_latencies(lab, target),
                }
            )
        assert await lab.wait_healthy() == primary
    record("switchover_each_node", seen)


async def test_history_records_the_last_switchover(lab: Lab) -> None:
    with anyio.fail_after(60):
        primary = await lab.wait_healthy()
        run = await run_failover(lab, "history", "-n", "1")
    assert run.returncode == 0, run.logs[-2000:]
    [last] = _list(run.data["switchovers"])
    entry = _dict(last)
    assert entry["outcome"] == "succeeded"
    assert entry["target"] == primary  # the previous test's last switchover
    assert "@" in str(entry["by"])
    phases = [_dict(p)["name"] for p in _list(entry["phases"])]
    assert phases[0] == "health_check"
    assert "migrate" in phases


async def test_status_watch_prints_a_json_document_per_refresh_until_ctrl_c(lab: Lab) -> None:
    with anyio.fail_after(60):
        primary = await lab.wait_healthy()
        argv = failover_argv(lab, ["status", "--watch", "500ms", "--json"])
        process = await anyio.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        async with process:
            assert process.stdout is not None
            first = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 1 << 20)
            process.send_signal(signal.SIGINT)
            code = await process.wait()
    assert code == 0
    doc = _dict(json.loads(first))
    nodes = {str(_dict(n)["name"]): _dict(n) for n in _list(doc["nodes"])}
    assert nodes[primary]["role"] == "Promoted"
    assert _dict(nodes[primary]["postgres"])["state"] == "primary"
    assert isinstance(_dict(nodes[primary]["postgres"])["timeline"], int)
    standbys = [n for name, n in nodes.items() if name != primary and n["online"]]
    assert standbys
    for standby in standbys:
        facts = _dict(standby["postgres"])
        assert facts["sync_state"] in {"sync", "async", "potential", "quorum"}
        assert facts["timeline"] == _dict(nodes[primary]["postgres"])["timeline"]


async def _maintenance_mode(lab: Lab, node: str) -> str:
    argv = ["crm_attribute", "--type", "crm_config", "--name", "maintenance-mode",
            "--query", "--quiet"]  # fmt: skip
    result = await lab.exec(node, argv, check=False)
    return result.stdout.strip() if result.returncode == 0 else "(unset)"


async def test_maintenance_mode_is_set_shown_and_blocks_a_switchover_until_off(lab: Lab) -> None:
    with anyio.fail_after(120):
        primary = await lab.wait_healthy()
        try:
            on = await run_failover(lab, "maintenance", "on", "--reason", "e2e window")
            assert on.returncode == 0, on.logs[-2000:]
            assert await _maintenance_mode(lab, primary) == "true"
            shown = _dict((await status(lab))["maintenance"])
            assert (shown["enabled"], shown["reason"]) == (True, "e2e window")
            refused = await run_failover(lab, "--yes")
            assert refused.returncode == 1, refused.logs[-2000:]
            assert "maintenance mode" in str(refused.data["error"])
            assert refused.data["phases"] == []
        finally:
            off = await run_failover(lab, "maintenance", "off")
        assert off.returncode == 0, off.logs[-2000:]
        assert await _maintenance_mode(lab, primary) == "false"
        assert await lab.wait_healthy() == primary
        assert _dict((await status(lab))["maintenance"])["enabled"] is False


async def test_killed_failover_leaves_nothing_that_cleanup_cannot_remove(lab: Lab) -> None:
    expiry, ttl = 8.0, 3.0
    with anyio.fail_after(180):
        primary = await lab.wait_healthy()
        target = next(n.name for n in lab.topology.others(primary))
        argv = failover_argv(lab, ["--yes", "--target", target, "--pause-expiry", f"{expiry:g}s"])
        process = await anyio.open_process(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        async with process:
            assert process.stderr is not None
            errors = BufferedByteReceiveStream(process.stderr)
            while True:
                line = json.loads(await errors.receive_until(b"\n", 1 << 20))
                if line.get("event") == "failover.phase.done" and line.get("phase") == "migrate":
                    break
            process.kill()
            await process.wait()
        killed_at = anyio.current_time()
        # The lock's lease is no longer kept alive: its key vanishes within the TTL.
        while await etcd_get(lab, f"{NAMESPACE}/lock") is not None:
            await anyio.sleep(0.1)
        lock_free_after = anyio.current_time() - killed_at
        # PgBouncers stay paused until supervise's own expiry lifts the pause.
        assert not await bouncer_answers(lab, APP_NODE, seconds=1)
        left = await status(lab)
        while PREFER not in _list(left["move_constraints"]):
            left = await status(lab)
        print(f"\n[e2e] status after SIGKILL: {json.dumps(left, indent=2)}")  # noqa: T201
        while any(_dict((await status(lab))["pgbouncer_paused"]).values()):
            await anyio.sleep(0.2)
        await lab.wait_healthy()
        for name in live_nodes(lab):
            assert await bouncer_answers(lab, name, seconds=10), name
        held = {name: pause_held_for(lab, name) for name in ("n1", "n2", "n3")}
        # cleanup clears the move once Pacemaker has settled (it says so until then).
        while True:
            run = await run_failover(lab, "cleanup")
            if run.returncode == 0 and not _list((await status(lab))["move_constraints"]):
                break
            await anyio.sleep(0.5)
        await lab.wait_healthy()
        await wait_everything_routes_to(lab, target)
    record(
        "killed_failover",
        {
            "pause_held_s": held,
            "lock_free_after_s": round(lock_free_after, 2),
            "pause_expiry_s": expiry,
            "lock_ttl_s": ttl,
            "left": left["move_constraints"],
        },
    )
    # The lease dies at most one TTL after the kill; each PgBouncer was resumed by its
    # supervise at the pause expiry (from its log: PAUSE -> expiry RESUME).
    assert lock_free_after <= ttl + 1
    assert all(seconds <= expiry + 1 for seconds in held.values()), held


async def test_killing_the_primary_node_moves_etcd_and_every_proxy(lab: Lab) -> None:
    with anyio.fail_after(240):
        primary = await lab.wait_healthy()
        await lab.kill_node(primary)
        others = [n.name for n in lab.topology.others(primary)]
        while (new := await lab.primary()) in {None, primary}:
            await anyio.sleep(0.2)
        assert new in others
        await wait_everything_routes_to(lab, str(new))
        assert await etcd_get(lab, f"{NAMESPACE}{MASTER_KEY}") == address(lab, str(new))
        latencies = await promotion_latencies(lab, str(new))
        record("node_kill", {"killed": primary, "promoted": new, **latencies})
        await lab.rejoin(primary)
        await wait_everything_routes_to(lab, str(new))
        assert sorted(live_nodes(lab)) == sorted(["n1", "n2", "n3", APP_NODE])
