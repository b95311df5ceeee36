"""The real ``pgcm-failover`` command against a real etcd: what reaches the terminal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from pgcm_common.etcd import open_etcd
from pgcm_common.records import (
    FencingRecord,
    InstanceTrouble,
    KeyLayout,
    NodeRole,
    NodeStatus,
    PostgresStatus,
    ProxyAck,
    ReplicationPeer,
    SwitchoverRecord,
    now_utc,
)
from pgcm_failover.history import write_history
from pgcm_testkit.etcd import EtcdMember, random_key

pytestmark = pytest.mark.integration

# ESC sequences (window title, clear screen, colour), BEL, CR, DEL, 8-bit CSI, bidi.
HOSTILE = "\x1b]0;owned\x07\x1b[2J\r\x7f\x9b31m\u202eevil"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PGCM_")}


async def cli(*argv: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m pgcm_failover ARGV`` without a terminal; return its output."""
    with anyio.fail_after(60):
        return await anyio.run_process(
            [sys.executable, "-m", "pgcm_failover", *argv, "--log-level", "error"],
            stdin=subprocess.DEVNULL,
            check=False,
            env=_env(),
        )


async def publish_hostile(etcd: EtcdMember, keys: KeyLayout) -> None:
    async with open_etcd(etcd.settings()) as store:
        ack = ProxyAck(proxy_id=HOSTILE, host=HOSTILE, revision=1, applied_at=now_utc())
        # A key segment no pgcm writer would produce: etcd holds whatever anyone wrote.
        await store.put(keys.proxies_prefix + HOSTILE.encode(), ack.to_json())
        await store.put(keys.master, HOSTILE.encode())
        status = NodeStatus(
            node="n1",
            address="10.0.0.11",
            observed_at=now_utc(),
            with_quorum=True,
            dc=HOSTILE,
            primary="n1",
            nodes=(NodeRole(name="n1", online=True, role="Promoted", promotion_score=1),),
            move_constraints=(HOSTILE,),
        )
        await store.put(keys.node_status("n1"), status.to_json())


async def test_status_escapes_hostile_proxy_ids_and_hosts_from_real_etcd(
    etcd: EtcdMember,
) -> None:
    namespace = random_key("hostile").decode()
    keys = KeyLayout(namespace, "/master")
    await publish_hostile(etcd, keys)
    # The record is written once: on a loaded machine two CLI start-ups may take longer
    # than the default freshness bound, which would hide its move constraints.
    common = ["--etcd-endpoints", etcd.endpoint, "--cluster-namespace", namespace,
              "--status-max-age", "10m"]  # fmt: skip

    table = await cli("status", *common)
    assert table.returncode == 0, table.stderr
    text = table.stdout.decode()
    assert all(c.isprintable() or c == "\n" for c in text)
    assert b"\x1b" not in table.stdout
    assert b"\xe2\x80\xae" not in table.stdout  # U+202E, encoded
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x0d\\x7f\\x9b31m\\u202eevil" in text

    as_json = await cli("status", "--json", *common)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["proxies"][0]["proxy_id"] == HOSTILE
    assert data["proxies"][0]["ack"]["host"] == HOSTILE
    assert data["etcd_primary"]["address"] == HOSTILE
    assert data["move_constraints"] == [HOSTILE]


async def publish_cluster(etcd: EtcdMember, keys: KeyLayout) -> None:
    primary_pg = PostgresStatus(
        in_recovery=False,
        timeline=2,
        replication=(
            ReplicationPeer(
                application_name="n2",
                state="streaming",
                sync_state="potential",
                lag_bytes=128,
                lag_s=0.5,
            ),
        ),
    )
    async with open_etcd(etcd.settings()) as store:
        for node, pg in (("n1", primary_pg), ("n2", PostgresStatus(in_recovery=True, timeline=2))):
            status = NodeStatus(
                node=node,
                address=None,
                observed_at=now_utc(),
                with_quorum=True,
                dc="n1",
                primary="n1",
                nodes=(
                    NodeRole(name="n1", online=True, role="Promoted", promotion_score=1001),
                    NodeRole(name="n2", online=True, role="Unpromoted", promotion_score=1000),
                ),
                postgres=pg,
            )
            await store.put(keys.node_status(node), status.to_json())


async def test_status_watch_json_refreshes_until_ctrl_c_and_exits_0(etcd: EtcdMember) -> None:
    namespace = random_key("watch").decode()
    keys = KeyLayout(namespace, "/master")
    await publish_cluster(etcd, keys)
    argv = [sys.executable, "-m", "pgcm_failover", "status", "--watch", "100ms", "--json"]
    argv += ["--etcd-endpoints", etcd.endpoint, "--cluster-namespace", namespace]
    argv += ["--status-max-age", "1h", "--log-level", "error"]
    with anyio.fail_after(60):
        process = await anyio.open_process(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=_env()
        )
        async with process:
            assert process.stdout is not None
            lines = BufferedByteReceiveStream(process.stdout)
            first = json.loads(await lines.receive_until(b"\n", 1 << 20))
            second = json.loads(await lines.receive_until(b"\n", 1 << 20))
            process.send_signal(signal.SIGINT)
            code = await process.wait()
    assert code == 0
    for doc in (first, second):
        n1, n2 = doc["nodes"]
        assert n1["postgres"] == {
            "timeline": 2,
            "state": "primary",
            "sync_state": None,
            "lag_bytes": None,
            "lag_s": None,
        }
        assert n2["postgres"] == {
            "timeline": 2,
            "state": "streaming",
            "sync_state": "potential",
            "lag_bytes": 128,
            "lag_s": 0.5,
        }
    assert first["at"] <= second["at"]


async def write_records(etcd: EtcdMember, keys: KeyLayout, count: int, keep: int) -> None:
    started = now_utc() - timedelta(hours=1)
    async with open_etcd(etcd.settings()) as store:
        for i in range(count):
            at = started + timedelta(minutes=i)
            record = SwitchoverRecord(
                started_at=at,
                finished_at=at + timedelta(seconds=4),
                outcome="succeeded" if i % 2 == 0 else "rolled_back",
                by="ops@host",
                pid=1000 + i,
                old_primary="n1",
                target="n2",
            )
            await write_history(store, keys, record, keep=keep)


async def test_history_is_bounded_and_read_newest_first_from_real_etcd(
    etcd: EtcdMember,
) -> None:
    namespace = random_key("history").decode()
    keys = KeyLayout(namespace, "/master")
    await write_records(etcd, keys, 5, 3)
    common = ["--etcd-endpoints", etcd.endpoint, "--cluster-namespace", namespace]
    result = await cli("history", "--json", *common)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [r["pid"] for r in data["switchovers"]] == [1004, 1003, 1002]
    assert data["unreadable"] == []
    table = await cli("history", "-n", "1", *common)
    assert table.returncode == 0, table.stderr
    assert table.stdout.decode().count("ops@host") == 1


async def test_status_shows_a_blocked_instance_fencing_and_what_to_do_from_real_etcd(
    etcd: EtcdMember,
) -> None:
    namespace = random_key("fenced").decode()
    keys = KeyLayout(namespace, "/master")
    blocked = InstanceTrouble(
        resource="pgsqld", node="n1", role="Promoted", failed=True, blocked=True, managed=False
    )
    fencing = (
        FencingRecord(target="n1", action="off", state="pending", origin="n2"),
        FencingRecord(
            target="n3",
            action="off",
            state="success",
            origin="n2",
            delegate="n1",
            completed="2026-12-07 04:40:12 +00:00",
        ),
    )
    async with open_etcd(etcd.settings()) as store:
        status = NodeStatus(
            node="n2",
            address=None,
            observed_at=now_utc(),
            with_quorum=True,
            dc="n2",
            primary="n1",
            nodes=(
                NodeRole(name="n1", online=True, role="Promoted", promotion_score=1001),
                NodeRole(name="n2", online=True, role="Unpromoted", promotion_score=1000),
            ),
            troubled_instances=(blocked,),
            fencing=fencing,
        )
        await store.put(keys.node_status("n2"), status.to_json())
    common = ["--etcd-endpoints", etcd.endpoint, "--cluster-namespace", namespace,
              "--status-max-age", "10m"]  # fmt: skip

    table = await cli("status", *common)
    assert table.returncode == 0, table.stderr
    text = table.stdout.decode()
    assert "BLOCKED instance: pgsqld (Promoted) on n1: failed, blocked, unmanaged" in text
    assert "  PENDING: off of n1 pending; requested by n2" in text
    assert "crm_resource --cleanup --resource pgsqld --node n1" in text
    assert "stonith_admin --confirm n1" in text

    as_json = await cli("status", "--json", *common)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["troubled_instances"][0]["blocked"] is True
    assert [f["state"] for f in data["fencing"]] == ["pending", "success"]
    assert len(data["what_to_do"]) == 2
