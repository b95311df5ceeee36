# ruff: noqa: ASYNC110  # polling other processes' state: there is no event to await
"""Switchovers with a hundred app hosts: 100 extra pgcm-proxy + PgBouncer pairs in the lab.

Brings the lab up with pgcm in ``/var/tmp/pgcm-lab-fleet`` and runs ``RUNS``
``pgcm-failover --json`` switchovers (each to the next node) under light pgbench
through the app node's PgBouncer, twice: (a) with the lab's own four proxies, (b) with
``FLEET_SIZE`` extra pairs started by :class:`pgcm_lab.fleet.Fleet` in the app node.
Per run: the paused seconds, the ``wait_for_proxies`` phase, and from etcd the spread of
the acknowledgements (``applied_at`` minus the new primary record's ``observed_at``).
The fleet's RSS and PSS come from ``/proc/PID/smaps_rollup``. Then (c) one fleet proxy is
SIGSTOPped right after its ack lease was renewed and a switchover runs, once for a pair
as deployed (ack lease 10 s) and once for a pair whose lease outlives the switchover: the
report's ``proxies_late`` and paused seconds show what ``proxy_ack_timeout`` (or the
lease) bounds, a query
through that pair's PgBouncer shows what its clients reach meanwhile, and after
SIGCONT the time until it acknowledges the new primary. The fleet and the lab are
always torn down, also on failure. Needs root; one lab per machine.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import anyio

from pgcm_lab.errors import LabError
from pgcm_lab.fleet import Fleet, Member, spread
from pgcm_lab.lab import Lab, Progress, lab_leftovers
from pgcm_lab.load import LoadReport
from pgcm_lab.pgcm import etcd_get, failover_argv, start_pgcm, wait_pgcm_ready
from pgcm_lab.pgcmconf import MASTER_KEY, NAMESPACE
from pgcm_lab.topology import APP_NODE

DESCRIPTION = (
    "Switchover cost with 100 app hosts: 3 pgcm-failover switchovers under pgbench "
    "(2 clients) with the lab's 4 proxies, then with 100 extra pgcm-proxy + PgBouncer "
    "pairs in the app node (paused s, wait_for_proxies s, ack spread after the etcd "
    "record, fleet RSS/PSS), then one of the 100 proxies SIGSTOPped during a switchover "
    "(proxy_ack_timeout 5 s), with the default 10 s ack lease and with a 60 s one."
)
STATE_DIR: Final = Path("/var/tmp/pgcm-lab-fleet")  # noqa: S108  # postgres must traverse it
FLEET_SIZE: Final = 100
RUNS: Final = 3
CLIENTS: Final = 2
LOAD_S: Final = 20
# Frozen during a switchover: a pair as deployed, and one whose ack lease (60 s) outlives
# the switchover, so only proxy_ack_timeout can end the wait for it.
FROZEN: Final = Member(FLEET_SIZE // 2)
FROZEN_LONG_LEASE: Final = Member(FLEET_SIZE // 2 + 1)
LONG_LEASE: Final = '"60s"'
IDLE_S: Final = 20
_RENEWED_TTL_S: Final = 9  # a lease of 10 s reading this much was renewed < 1 s ago


def _dict(value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {value!r}")
    return {str(k): v for k, v in value.items()}


def _float(value: object) -> float:
    if not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {value!r}")
    return value


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


async def _ack_spread_ms(lab: Lab, fleet: Fleet, address: str) -> dict[str, object]:
    """Each ack of ``address``: ms from the etcd primary record's ``observed_at``."""
    raw = await etcd_get(lab, f"{NAMESPACE}{MASTER_KEY}.json")
    if raw is None:
        raise LabError("no primary record in etcd")
    observed = datetime.fromisoformat(str(_dict(json.loads(raw))["observed_at"]))
    delays: dict[str, float] = {}
    for proxy_id, value in (await fleet.acks()).items():
        ack = _dict(json.loads(value))
        if ack.get("host") == address:
            applied = datetime.fromisoformat(str(ack["applied_at"]))
            delays[proxy_id] = round((applied - observed).total_seconds() * 1000, 1)
    fleet_ms = [v for k, v in delays.items() if k.startswith("app-")]
    lab_ms = [v for k, v in delays.items() if not k.startswith("app-")]
    out: dict[str, object] = {"acks": len(delays), "observed_at": observed.isoformat()}
    if fleet_ms:
        out["fleet_proxies_ack_ms"] = spread(fleet_ms)
    if lab_ms:
        out["lab_proxies_ack_ms"] = spread(lab_ms)
    return out


async def _lease_ttl(lab: Lab, key: str) -> int | None:
    """Seconds left on the lease holding ``key`` (etcdctl in the first Postgres node)."""
    node = lab.topology.nodes[0].name
    base = ["etcdctl", "--endpoints=http://127.0.0.1:2379", "--command-timeout=2s"]
    env = {"ETCDCTL_API": "3"}
    got = await lab.exec(node, [*base, "get", key, "-w", "json"], check=False, env=env)
    kvs = json.loads(got.stdout or "{}").get("kvs") or []
    if got.returncode != 0 or not kvs or not kvs[0].get("lease"):
        return None
    lease = format(int(kvs[0]["lease"]), "x")
    ttl = await lab.exec(node, [*base, "lease", "timetolive", lease, "-w", "json"],
                         check=False, env=env)  # fmt: skip
    if ttl.returncode != 0:
        return None
    return int(json.loads(ttl.stdout).get("ttl", -1))


async def _freeze_after_renewal(lab: Lab, fleet: Fleet, member: Member) -> int | None:
    """SIGSTOP ``member``'s proxy just after its ack lease was renewed; return the TTL seen.

    So its ack lives as long as it can into the switchover.
    """
    key = f"{NAMESPACE}/proxies/{member.proxy_id}"
    ttl: int | None = None
    with anyio.move_on_after(15):
        while (ttl := await _lease_ttl(lab, key)) is None or ttl < _RENEWED_TTL_S:
            await anyio.sleep(0.05)
    fleet.freeze(member.proxy_id)
    return ttl


async def _through_frozen_pair(lab: Lab, member: Member) -> str:
    """What a client of the frozen pair's PgBouncer reaches: server address, recovery."""
    argv = ["timeout", "10", "psql", "-X", "-h", "127.0.0.1", "-p", str(member.port), "-U",
            "postgres", "-d", "postgres", "-qAt", "-c",
            "select inet_server_addr(), pg_is_in_recovery()"]  # fmt: skip
    result = await lab.exec(APP_NODE, argv, check=False)
    if result.returncode != 0:
        return f"error: {(result.stderr or result.stdout).strip()[-300:]}"
    return result.stdout.strip()


async def _switchover(lab: Lab, fleet: Fleet, *, freeze: Member | None = None) -> dict[str, object]:
    """One switchover to the next node under pgbench; return its measurements."""
    names = [n.name for n in lab.topology.nodes]
    with anyio.fail_after(180):
        current = await lab.wait_healthy()
        await wait_pgcm_ready(lab, current)
        await fleet.wait_acked(str(lab.topology.node(current).address))
    target = names[(names.index(current) + 1) % len(names)]
    address = str(lab.topology.node(target).address)
    box: dict[str, LoadReport] = {}
    extra: dict[str, object] = {}

    async def load() -> None:
        box["load"] = await lab.load(seconds=LOAD_S, clients=CLIENTS)

    async with anyio.create_task_group() as tg:
        tg.start_soon(load)
        with anyio.fail_after(30):
            while await lab.pgbench_clients() < CLIENTS:
                await anyio.sleep(0.1)
        if freeze:
            extra["frozen_lease_ttl_at_stop_s"] = await _freeze_after_renewal(lab, fleet, freeze)
            stopped_at = datetime.now(UTC)
        argv = failover_argv(lab, ["--yes", "--target", target, "--json"])
        result = await lab.run(argv, check=False)
        if freeze:
            extra["frozen_pair_query"] = await _through_frozen_pair(lab, freeze)
            ini = fleet.host_dir / freeze.proxy_id / "pgbouncer.ini"
            extra["frozen_pair_routes_to_new_primary"] = f"host={address} " in ini.read_text()
    if result.returncode != 0:
        raise RuntimeError(f"pgcm-failover failed: {result.stdout[-1500:]} {result.stderr[-1500:]}")
    report = _dict(json.loads(result.stdout))
    if freeze:
        thawed = time.monotonic()
        fleet.thaw(freeze.proxy_id)
        with anyio.fail_after(60):
            await fleet.wait_acked(address, [freeze])
        extra["frozen_acked_after_sigcont_s"] = round(time.monotonic() - thawed, 2)
    with anyio.fail_after(180):
        await wait_pgcm_ready(lab, target)
        await fleet.wait_acked(address)
    phases = {
        str(_dict(p)["name"]): round(_float(_dict(p)["seconds"]), 3)
        for p in _list(report["phases"])
    }
    clients = box["load"]
    spread_ms = await _ack_spread_ms(lab, fleet, address)
    if freeze:
        observed = datetime.fromisoformat(str(spread_ms["observed_at"]))
        extra["frozen_stop_to_etcd_s"] = round((observed - stopped_at).total_seconds(), 2)
    return {
        "target": target,
        "paused_s": round(_float(report["paused_seconds"]), 3),
        "wait_for_proxies_s": phases.get("wait_for_proxies"),
        "total_s": round(_float(report["total_seconds"]), 3),
        "proxies_acknowledged": len(_list(report["proxies_acknowledged"])),
        "proxies_late": report["proxies_late"],
        "failed_transactions": clients.failed_transactions,
        "aborted_clients": clients.aborted_clients,
        "max_latency_ms": clients.latency_max_ms,
        **spread_ms,
        **extra,
    }


def _summary(prefix: str, runs: list[dict[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {
        f"{prefix}_paused_median_s": _median([_float(r["paused_s"]) for r in runs]),
        f"{prefix}_wait_for_proxies_median_s": _median(
            [_float(r["wait_for_proxies_s"]) for r in runs]
        ),
        f"{prefix}_failed_transactions_total": sum(
            int(_float(r["failed_transactions"])) for r in runs
        ),
        f"{prefix}_aborted_clients_total": sum(int(_float(r["aborted_clients"])) for r in runs),
    }
    for group in ("lab_proxies_ack_ms", "fleet_proxies_ack_ms"):
        if all(group in r for r in runs):
            for point in ("first", "median", "p99", "last"):
                values = [_float(_dict(r[group])[point]) for r in runs]
                out[f"{prefix}_{group.removesuffix('_ms')}_{point}_median_ms"] = _median(values)
    return out


def _memory(fleet: Fleet) -> dict[str, object]:
    usage = fleet.memory()
    proxies = [m for k, m in usage.items() if k.endswith("/proxy")]
    bouncers = [m for k, m in usage.items() if k.endswith("/pgbouncer")]
    mb = 1024
    return {
        "fleet_processes": len(usage),
        "fleet_rss_total_mb": round(sum(m.rss_kb for m in usage.values()) / mb, 1),
        "fleet_pss_total_mb": round(sum(m.pss_kb for m in usage.values()) / mb, 1),
        "proxy_rss_median_mb": _median([m.rss_kb / mb for m in proxies]),
        "proxy_pss_median_mb": _median([m.pss_kb / mb for m in proxies]),
        "pgbouncer_rss_median_mb": _median([m.rss_kb / mb for m in bouncers]),
        "pgbouncer_pss_median_mb": _median([m.pss_kb / mb for m in bouncers]),
    }


async def _bench(lab: Lab, fleet: Fleet) -> dict[str, object]:
    await lab.up()
    await start_pgcm(lab)
    primary = await lab.wait_healthy()
    await lab.exec(primary, ["pgbench", "-i", "-q", "-s", "1", "-h", "/run/postgresql",
                             "postgres"], user="postgres")  # fmt: skip
    baseline = []
    for _ in range(RUNS):
        baseline.append(await _switchover(lab, fleet))
        sys.stderr.write(f"baseline run {len(baseline)}: {json.dumps(baseline[-1])}\n")
    current = await lab.wait_healthy()
    free_before = fleet.check_memory(FLEET_SIZE)
    started = time.monotonic()
    with anyio.fail_after(max(300, 6 * FLEET_SIZE)):
        await fleet.start(
            FLEET_SIZE,
            str(lab.topology.node(current).address),
            {FROZEN_LONG_LEASE.index: {"ack_lease_ttl": LONG_LEASE}},
        )
    fleet_start_s = time.monotonic() - started
    memory = _memory(fleet)
    cpu_before = fleet.cpu_seconds()
    await anyio.sleep(IDLE_S)
    idle_cpu = (fleet.cpu_seconds() - cpu_before) / IDLE_S * 100
    with_fleet = []
    for _ in range(RUNS):
        with_fleet.append(await _switchover(lab, fleet))
        sys.stderr.write(f"fleet run {len(with_fleet)}: {json.dumps(with_fleet[-1])}\n")
    frozen: dict[str, dict[str, object]] = {}
    for name, member in (("frozen", FROZEN), ("frozen_long_lease", FROZEN_LONG_LEASE)):
        frozen[name] = await _switchover(lab, fleet, freeze=member)
        sys.stderr.write(f"{name} run: {json.dumps(frozen[name])}\n")
    out: dict[str, object] = {
        "fleet_size": FLEET_SIZE,
        "runs_each": RUNS,
        "load": f"pgbench -c {CLIENTS} -T {LOAD_S} (TPC-B, scale 1) via app PgBouncer",
        **_summary("lab_only", baseline),
        **_summary("with_fleet", with_fleet),
        "fleet_start_s": round(fleet_start_s, 1),
        "mem_available_before_fleet_mb": free_before,
        **memory,
        "fleet_idle_cpu_percent_of_one_core": round(idle_cpu, 1),
    }
    for name, member in (("frozen", FROZEN), ("frozen_long_lease", FROZEN_LONG_LEASE)):
        run = frozen[name]
        out[f"{name}_proxy"] = member.proxy_id
        for key in ("paused_s", "wait_for_proxies_s", "proxies_late"):
            out[f"{name}_{key}"] = run[key]
        for key in ("lease_ttl_at_stop_s", "stop_to_etcd_s", "pair_query",
                    "pair_routes_to_new_primary", "acked_after_sigcont_s"):  # fmt: skip
            out[f"{name}_{key}"] = run.get(f"frozen_{key}")
    return {
        **out,
        "per_run_lab_only": baseline,
        "per_run_with_fleet": with_fleet,
        "frozen_runs": frozen,
    }


async def _teardown(lab: Lab, fleet: Fleet) -> None:
    try:
        await fleet.stop()
    finally:
        await lab.down()


def run() -> dict[str, object]:
    """Lab up with pgcm; switchovers without and with the fleet, one with a frozen proxy."""
    probe = Lab(STATE_DIR, progress=Progress(None))
    if lab_leftovers(probe):
        raise RuntimeError(f"a lab is already running: {lab_leftovers(probe)}")
    lab = Lab(STATE_DIR, progress=Progress(sys.stderr))
    fleet = Fleet(lab)
    try:
        results = anyio.run(_bench, lab, fleet)
    finally:
        anyio.run(_teardown, lab, fleet)
    results["targets"] = {
        "fleet_failed_transactions_total": "0",
        "frozen_long_lease_paused_s": "<= the fleet's paused time + proxy_ack_timeout (5 s)",
    }
    return results
