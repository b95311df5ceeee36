from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from pgcm_common.pacemaker import PacemakerCommandFailed, StaticNodeAddresses
from pgcm_common.postgres import (
    PostgresAuthError,
    PostgresProtocolError,
    PostgresQueryError,
    PostgresUnreachable,
)
from pgcm_common.records import KeyLayout, NodeStatus, PostgresStatus, ReplicationPeer
from pgcm_supervise.publisher import Observation
from pgcm_supervise.status import NodeStatusPublisher, build_node_status
from pgcm_testkit.fakes.etcd import FakeEtcdStore
from pgcm_testkit.fakes.pacemaker import state_from_file

FIXTURES = Path(__file__).parents[4] / "libs" / "pgcm-common" / "tests" / "fixtures" / "pacemaker"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY = b"/pg/supervise/n2"


def healthy() -> Observation:
    state = state_from_file(FIXTURES / "02b-during-switchover.xml", resource_id="pgsqld")
    return Observation(state, None, T0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Paused:
    def __init__(self) -> None:
        self.value: bool | None = True

    async def paused(self) -> bool | None:
        return self.value


class Postgres:
    async def probe(self) -> PostgresStatus:
        peer = ReplicationPeer(
            application_name="n1", state="streaming", sync_state="sync", lag_bytes=0
        )
        return PostgresStatus(in_recovery=False, replication=(peer,), oldest_transaction_age_s=1.5)


def test_status_carries_nodes_roles_scores_and_primary() -> None:
    status = build_node_status(
        healthy(), node="n2", address="10.0.0.12", pgbouncer_paused=None, postgres=None
    )
    assert (status.primary, status.with_quorum, status.dc) == ("n2", True, status.dc)
    roles = {n.name: (n.role, n.promotion_score) for n in status.nodes}
    assert roles["n2"] == ("Promoted", 1001)
    assert roles["n1"][1] == -1000
    assert status.problem is None


def test_failed_read_still_gives_a_status_that_says_why() -> None:
    error = PacemakerCommandFailed(("crm_mon",), 102, "not connected")
    status = build_node_status(
        Observation(None, error, T0), node="n2", address=None, pgbouncer_paused=None, postgres=None
    )
    assert not status.with_quorum
    assert status.primary is None
    assert status.problem is not None
    assert "not connected" in status.problem


async def test_status_is_written_on_a_lease_and_revoked_on_exit() -> None:
    store = FakeEtcdStore()
    clock = Clock()
    async with NodeStatusPublisher(
        store=store,
        layout=KeyLayout("/pg"),
        node="n2",
        resolver=StaticNodeAddresses({"n2": "10.0.0.12"}),
        lease_ttl=timedelta(seconds=10),
        interval=timedelta(seconds=1),
        paused=Paused(),
        postgres=Postgres(),
        monotonic=clock,
    ) as publisher:
        with anyio.fail_after(5):
            await publisher.observe(healthy())
        kv = await store.get(KEY)
        assert kv is not None
        assert kv.lease != 0
        status = NodeStatus.from_json(KEY, kv.value)
        assert status.address == "10.0.0.12"
        assert status.pgbouncer_paused is True
        assert status.postgres is not None
        assert status.postgres.replication[0].sync_state == "sync"
        # Unchanged view within the interval: no rewrite.
        with anyio.fail_after(5):
            await publisher.observe(healthy())
        assert (await store.get(KEY)).mod_revision == kv.mod_revision  # type: ignore[union-attr]
        # The lease is lost (etcd restarted, a long partition): a new one is granted.
        store.expire_lease(kv.lease)
        assert await store.get(KEY) is None
        clock.now += 2
        with anyio.fail_after(5):
            await publisher.observe(healthy())
        again = await store.get(KEY)
        assert again is not None
        assert again.lease not in {0, kv.lease}
    assert await store.get(KEY) is None


def test_status_carries_the_resource_agent_and_legacy_data_status() -> None:
    state = state_from_file(FIXTURES / "10-stock-pgsql-ra-healthy-n1.xml", resource_id="pgsql")
    status = build_node_status(
        Observation(state, None, T0), node="n1", address=None, pgbouncer_paused=None, postgres=None
    )
    assert status.resource_agent == "ocf:heartbeat:pgsql"
    expected = {a.node: a.data_status_raw for a in state.legacy_pgsql}
    assert {n.name: n.data_status for n in status.nodes} == expected
    assert expected["n1"] == "LATEST"
    paf = build_node_status(
        healthy(), node="n1", address=None, pgbouncer_paused=None, postgres=None
    )
    assert paf.resource_agent == "ocf:heartbeat:pgsqlms"
    assert all(n.data_status is None for n in paf.nodes)


class FailingPostgres:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def probe(self) -> PostgresStatus:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        PostgresUnreachable("cannot connect to 127.0.0.1:5432: refused"),
        PostgresAuthError("127.0.0.1:5432 refused login as 'probe'"),
        PostgresQueryError("SELECT", "57P01", "terminating connection"),
        PostgresProtocolError("bad message length 3"),
        TimeoutError(),
    ],
    ids=["unreachable", "auth", "query", "protocol", "timeout"],
)
async def test_every_probe_failure_is_published_as_the_nodes_problem(error: Exception) -> None:
    store = FakeEtcdStore()
    async with NodeStatusPublisher(
        store=store,
        layout=KeyLayout("/pg"),
        node="n2",
        resolver=StaticNodeAddresses({"n2": "10.0.0.12"}),
        lease_ttl=timedelta(seconds=10),
        interval=timedelta(seconds=1),
        postgres=FailingPostgres(error),
        monotonic=Clock(),
    ) as publisher:
        with anyio.fail_after(5):
            await publisher.observe(healthy())
        kv = await store.get(KEY)
        assert kv is not None
        status = NodeStatus.from_json(KEY, kv.value)
        assert status.postgres is None
        assert status.problem == f"postgres: {error}"
