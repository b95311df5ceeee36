"""The real ``pgcm-failover`` command against a real etcd: what reaches the terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anyio
import pytest

from pgcm_common.etcd import open_etcd
from pgcm_common.records import KeyLayout, NodeRole, NodeStatus, ProxyAck, now_utc
from pgcm_testkit.etcd import EtcdMember, random_key

pytestmark = pytest.mark.integration

# ESC sequences (window title, clear screen, colour), BEL, CR, DEL, 8-bit CSI, bidi.
HOSTILE = "\x1b]0;owned\x07\x1b[2J\r\x7f\x9b31m\u202eevil"


def cli(*argv: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m pgcm_failover ARGV`` without a terminal; return its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGCM_")}
    return subprocess.run(
        [sys.executable, "-m", "pgcm_failover", *argv, "--log-level", "error"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        timeout=60,
        env=env,
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


def test_status_escapes_hostile_proxy_ids_and_hosts_from_real_etcd(etcd: EtcdMember) -> None:
    namespace = random_key("hostile").decode()
    keys = KeyLayout(namespace, "/master")
    anyio.run(publish_hostile, etcd, keys)
    common = ["--etcd-endpoints", etcd.endpoint, "--cluster-namespace", namespace]

    table = cli("status", *common)
    assert table.returncode == 0, table.stderr
    text = table.stdout.decode()
    assert all(c.isprintable() or c == "\n" for c in text)
    assert b"\x1b" not in table.stdout
    assert b"\xe2\x80\xae" not in table.stdout  # U+202E, encoded
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x0d\\x7f\\x9b31m\\u202eevil" in text

    as_json = cli("status", "--json", *common)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["proxies"][0]["proxy_id"] == HOSTILE
    assert data["proxies"][0]["ack"]["host"] == HOSTILE
    assert data["etcd_primary"]["address"] == HOSTILE
    assert data["move_constraints"] == [HOSTILE]
