"""``status``: each node's timeline, replication state and lag; ``--watch``."""

from __future__ import annotations

import io
import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from pgcm_common.etcd import Listing
from pgcm_common.records import (
    KeyLayout,
    NodeRole,
    NodeStatus,
    PostgresStatus,
    ReplicationPeer,
    now_utc,
)
from pgcm_failover.app import Adapters, AdaptersFactory, collect_status, node_replication
from pgcm_failover.cli import CLEAR_SCREEN, main
from pgcm_failover.cluster import ClusterSnapshot
from pgcm_failover.report import NodeReplication, dumps, render_status, status_to_dict
from pgcm_failover.settings import FailoverSettings
from pgcm_testkit.fakes.etcd import FakeEtcdStore

LAYOUT = KeyLayout("/pg", "/master")
NODES = ("n1", "n2", "n3", "n4")
ARGS = ["--cluster-namespace", "/pg", "--endpoints", "s1:1", "--log-level", "error"]


def record(node: str, pg: PostgresStatus | None) -> NodeStatus:
    return NodeStatus(
        node=node,
        address=f"10.0.0.{NODES.index(node) + 11}",
        observed_at=now_utc(),
        with_quorum=True,
        dc="n1",
        primary="n1",
        nodes=tuple(
            NodeRole(
                name=n,
                online=n != "n4",
                role="Promoted" if n == "n1" else ("Unpromoted" if n != "n4" else "Stopped"),
                promotion_score=1001 if n == "n1" else 1000,
            )
            for n in NODES
        ),
        pgbouncer_paused=False,
        postgres=pg,
    )


PRIMARY_PG = PostgresStatus(
    in_recovery=False,
    timeline=3,
    replication=(
        ReplicationPeer(
            application_name="n2", state="streaming", sync_state="sync", lag_bytes=0, lag_s=0.0012
        ),
        ReplicationPeer(
            application_name="n3", state="catchup", sync_state="async", lag_bytes=4096, lag_s=None
        ),
    ),
)


def records() -> dict[str, NodeStatus]:
    return {
        "n1": record("n1", PRIMARY_PG),
        "n2": record("n2", PostgresStatus(in_recovery=True, timeline=3)),
        "n3": record("n3", PostgresStatus(in_recovery=True, timeline=2)),
        # n4 publishes no PostgreSQL facts (its supervise has no local connection).
        "n4": record("n4", None),
    }


def snapshot() -> ClusterSnapshot:
    statuses = records()
    return ClusterSnapshot(statuses=statuses, view=statuses["n1"])


def test_each_node_gets_its_timeline_and_the_primarys_view_of_its_replication() -> None:
    found = node_replication(snapshot())
    assert found["n1"] == NodeReplication(timeline=3, state="primary")
    assert found["n2"] == NodeReplication(
        timeline=3, state="streaming", sync_state="sync", lag_bytes=0, lag_s=0.0012
    )
    assert found["n3"] == NodeReplication(
        timeline=2, state="catchup", sync_state="async", lag_bytes=4096
    )
    assert found["n4"] == NodeReplication(state="not replicating")


def test_records_from_an_older_supervise_leave_the_new_columns_empty() -> None:
    # An older writer publishes neither timeline nor lag_s: status shows '-', no error.
    old = json.loads(record("n1", PRIMARY_PG).to_json())
    del old["postgres"]["timeline"]
    for peer in old["postgres"]["replication"]:
        del peer["lag_s"]
    parsed = NodeStatus.from_json("k", json.dumps(old).encode())
    found = node_replication(ClusterSnapshot(statuses={"n1": parsed}, view=parsed))
    assert found["n1"].timeline is None
    assert found["n2"].lag_s is None
    assert found["n2"].lag_bytes == 0


async def status_of(store: FakeEtcdStore) -> str:
    for node, published in records().items():
        await store.put(LAYOUT.node_status(node), published.to_json())
    settings = FailoverSettings(endpoints=["s1:1"], cluster={"namespace": "/pg"})
    status = await collect_status(Adapters(store, []), settings)
    data = json.loads(dumps(status_to_dict(status)))
    assert data["nodes"][1]["postgres"] == {
        "timeline": 3,
        "state": "streaming",
        "sync_state": "sync",
        "lag_bytes": 0,
        "lag_s": 0.0012,
    }
    return render_status(status)


async def test_status_table_shows_role_score_timeline_replication_and_lag() -> None:
    text = await status_of(FakeEtcdStore())
    lines = text.splitlines()
    header = lines[1].split()
    assert header[:5] == ["node", "state", "role", "score", "timeline"]
    assert "replication" in header
    rows = {line.split()[0]: line.split() for line in lines[2:6]}
    assert rows["n1"][:6] == ["n1", "online", "Promoted", "1001", "3", "primary"]
    assert rows["n2"][4:9] == ["3", "sync", "0", "B", "0.001s"]
    assert rows["n3"][4:7] == ["2", "async", "(catchup)"]
    assert "4096 B" in lines[4]
    assert rows["n4"][1:6] == ["OFFLINE", "Stopped", "1000", "-", "not"]


# ----------------------------------------------------------------------------- --watch


class SignalAfter:
    """A store that sends this process SIGINT (the operator's Ctrl-C) at a given read."""

    def __init__(self, inner: FakeEtcdStore, reads: int) -> None:
        self._inner = inner
        self._left = reads

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def get_prefix(self, prefix: bytes) -> Listing:
        if prefix == LAYOUT.supervise_prefix:
            self._left -= 1
            if self._left == 0:
                signal.raise_signal(signal.SIGINT)
        return await self._inner.get_prefix(prefix)


def watched(reads: int) -> AdaptersFactory:
    store = FakeEtcdStore()

    @asynccontextmanager
    async def opened(_settings: FailoverSettings) -> AsyncIterator[Adapters]:
        for node, published in records().items():
            await store.put(LAYOUT.node_status(node), published.to_json())
        # SignalAfter delegates the rest of EtcdStore through __getattr__, which mypy
        # does not count towards a Protocol.
        yield Adapters(SignalAfter(store, reads), [])  # type: ignore[arg-type]

    return opened


class TtyOut(io.StringIO):
    """Standard output that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def run_watch(monkeypatch: pytest.MonkeyPatch, out: io.StringIO, *argv: str) -> int:
    monkeypatch.setattr("sys.stdout", out)
    return main(["status", *argv, *ARGS], adapters=watched(reads=3))


def test_watch_json_prints_one_document_per_refresh_and_ctrl_c_exits_0(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()
    assert run_watch(monkeypatch, out, "--watch", "100ms", "--json") == 0
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    # The third refresh was interrupted while reading etcd: two complete documents.
    assert len(docs) == 2
    assert all(d["nodes"][0]["postgres"]["state"] == "primary" for d in docs)
    assert all("at" in d for d in docs)


def test_watch_redraws_in_place_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    out = TtyOut()
    assert run_watch(monkeypatch, out, "--watch", "100ms") == 0
    frames = out.getvalue().split(CLEAR_SCREEN)
    assert frames[0] == ""
    assert len(frames) == 3
    assert all("(Ctrl-C to stop)" in f and "timeline" in f for f in frames[1:])


def test_watch_interval_below_the_floor_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["status", "--watch", "1ms", *ARGS])
    assert info.value.code == 2
    assert "at least 0.1s" in capsys.readouterr().err
