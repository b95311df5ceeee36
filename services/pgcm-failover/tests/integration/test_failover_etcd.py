from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import anyio
import pytest
from grpclib.const import Status
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from pgcm_common.etcd import EtcdStore, KeyValue, open_etcd, watch_keys
from pgcm_common.proto.failover import (
    Empty,
    FailoverBase,
    HealthCheckResponse,
    HealthCheckResponseStatus,
    MigrateRequest,
    MigrateResponse,
    PauseRequest,
    PauseResponse,
    ResumeResponse,
    UnmigrateResponse,
)
from pgcm_common.records import (
    FencingRecord,
    InstanceTrouble,
    KeyLayout,
    NodeRole,
    NodeStatus,
    ProxyAck,
    now_utc,
)
from pgcm_failover.app import pipeline_options
from pgcm_failover.client import SuperviseEndpoint
from pgcm_failover.cluster import NodeStatusCluster
from pgcm_failover.coordinator import EtcdCoordinator
from pgcm_failover.errors import FailoverAborted
from pgcm_failover.pipeline import Pipeline
from pgcm_failover.settings import FailoverSettings
from pgcm_testkit.etcd import EtcdMember, random_key

pytestmark = pytest.mark.integration

ADDRESSES = {"n1": "10.0.0.11", "n2": "10.0.0.12", "n3": "10.0.0.13"}
TTL = timedelta(seconds=1)
TOKEN = "s3cret-token"  # noqa: S105 - a test token


def layout() -> KeyLayout:
    return KeyLayout(random_key("failover").decode(), "/master")


async def put_ack(  # noqa: PLR0917 - a terse test helper
    store: EtcdStore, keys: KeyLayout, proxy: str, host: str, rev: int, lease: int
) -> None:
    ack = ProxyAck(proxy_id=proxy, host=host, revision=rev, applied_at=now_utc())
    await store.put(keys.proxy_ack(proxy), ack.to_json(), lease=lease)


async def test_lock_contention_and_release_on_real_etcd(etcd: EtcdMember) -> None:
    keys = layout()
    async with (
        open_etcd(etcd.settings()) as store,
        EtcdCoordinator(store, keys, lock_ttl=TTL, holder="first") as first,
        EtcdCoordinator(store, keys, lock_ttl=TTL, holder="second") as second,
    ):
        with anyio.fail_after(5):
            await first.acquire_lock()
        with anyio.move_on_after(0.5) as blocked:
            await second.acquire_lock()
        assert blocked.cancelled_caught
        await first.release_lock()
        with anyio.fail_after(5):
            await second.acquire_lock()
        current = await store.get(keys.lock)
        assert current is not None
        assert b'"holder": "second"' in current.value


async def test_proxy_acks_on_real_leases_with_one_proxy_vanishing(etcd: EtcdMember) -> None:
    keys = layout()
    async with open_etcd(etcd.settings()) as store:
        lease_a = await store.grant_lease(timedelta(seconds=10))
        lease_b = await store.grant_lease(timedelta(seconds=10))
        await put_ack(store, keys, "app1", "10.0.0.11", 1, lease_a.id)
        await put_ack(store, keys, "app2", "10.0.0.11", 1, lease_b.id)
        revision = await store.put(keys.master, b"10.0.0.12")
        async with EtcdCoordinator(store, keys, lock_ttl=TTL) as coordinator:
            result: list[str] = []
            with anyio.fail_after(10):
                await coordinator.wait_for_primary("10.0.0.12")
                async with anyio.create_task_group() as tg:

                    async def wait() -> None:
                        result.extend(await coordinator.wait_for_proxy_acks("10.0.0.12"))

                    tg.start_soon(wait)
                    await put_ack(store, keys, "app1", "10.0.0.12", revision, lease_a.id)
                    with anyio.move_on_after(0.3):
                        while not result:  # noqa: ASYNC110 - must stay empty: app2 pending
                            await anyio.sleep(0.02)
                    assert result == []
                    await store.revoke_lease(lease_b.id)  # app2 dies
            assert result == ["app1"]
        await store.revoke_lease(lease_a.id)


@dataclass
class SuperviseDouble(FailoverBase):
    """Stands in for pgcm-supervise: answers rpcs and publishes what it would publish."""

    node: str
    store: EtcdStore
    keys: KeyLayout
    world: World
    paused: bool = False

    async def health_check(self, message: Empty) -> HealthCheckResponse:
        return HealthCheckResponse(status=HealthCheckResponseStatus.HEALTHY)

    async def pause(self, message: PauseRequest) -> PauseResponse:
        assert message.timeout_ms > 0
        self.paused = True
        self.world.events.append(f"pause@{self.node}")
        await self.world.publish()
        return PauseResponse()

    async def resume(self, message: Empty) -> ResumeResponse:
        self.paused = False
        self.world.events.append(f"resume@{self.node}")
        await self.world.publish()
        return ResumeResponse()

    async def migrate(self, message: Empty) -> MigrateResponse:
        return await self.migrate_to(MigrateRequest(target=""))

    async def migrate_to(self, message: MigrateRequest) -> MigrateResponse:
        target = message.target or "n2"
        if target not in ADDRESSES:
            raise GRPCError(Status.FAILED_PRECONDITION, f"unknown node {target}")
        self.world.events.append(f"migrate@{self.node}")
        self.world.primary = target
        self.world.constraint = True
        self.world.settled = False
        await self.world.publish()
        await self.store.put(self.keys.master, ADDRESSES[target].encode())
        return MigrateResponse(migrating_to=target, address=ADDRESSES[target])

    async def unmigrate(self, message: Empty) -> UnmigrateResponse:
        self.world.events.append(f"unmigrate@{self.node}")
        self.world.constraint = False
        await self.world.publish()
        return UnmigrateResponse()


@dataclass
class World:
    store: EtcdStore
    keys: KeyLayout
    lease: int
    primary: str = "n1"
    constraint: bool = False
    settled: bool = True
    events: list[str] = field(default_factory=list)
    doubles: dict[str, SuperviseDouble] = field(default_factory=dict)
    troubled: tuple[InstanceTrouble, ...] = ()
    fencing: tuple[FencingRecord, ...] = ()

    def roles(self) -> tuple[NodeRole, ...]:
        # Right after the move PAF still gives the old primary the top score (docs/lab.md).
        top = self.primary if self.settled else "n1"
        return tuple(
            NodeRole(
                name=n,
                online=True,
                role="Promoted" if n == self.primary else "Unpromoted",
                promotion_score=1001 if n == top else 1000 - i,
            )
            for i, n in enumerate(ADDRESSES)
        )

    async def publish(self) -> None:
        for node, double in self.doubles.items():
            record = NodeStatus(
                node=node,
                address=ADDRESSES[node],
                observed_at=now_utc(),
                with_quorum=True,
                dc="n1",
                primary=self.primary,
                nodes=self.roles(),
                move_constraints=("cli-prefer-pgsql-ha",) if self.constraint else (),
                pgbouncer_paused=double.paused,
                troubled_instances=self.troubled,
                fencing=self.fencing,
            )
            await self.store.put(self.keys.node_status(node), record.to_json(), lease=self.lease)


async def proxy_double(store: EtcdStore, keys: KeyLayout, proxy: str, lease: int) -> None:
    """Follows the master key like pgcm-proxy and acks each value it applies."""
    listing = await store.get_prefix(keys.master)
    async with watch_keys(store, keys.master, listing.revision + 1) as events:
        async for event in events:
            if isinstance(event, KeyValue) and event.key == keys.master:
                await put_ack(store, keys, proxy, event.value.decode(), event.mod_revision, lease)


@asynccontextmanager
async def grpc_server(double: SuperviseDouble, seen_tokens: list[str]) -> AsyncIterator[int]:
    server = Server([double])

    async def on_request(event: RecvRequest) -> None:
        seen_tokens.append(str(event.metadata.get("authorization", "")))

    listen(server, RecvRequest, on_request)
    await server.start("127.0.0.1", 0)
    try:
        assert isinstance(server._server, asyncio.Server)
        yield int(server._server.sockets[0].getsockname()[1])
    finally:
        server.close()
        with anyio.move_on_after(5, shield=True):
            await server.wait_closed()


async def test_full_switchover_against_real_etcd_and_grpc_servers(etcd: EtcdMember) -> None:
    keys = layout()
    seen_tokens: list[str] = []
    async with open_etcd(etcd.settings()) as store:
        lease = await store.grant_lease(timedelta(seconds=30))
        world = World(store, keys, lease.id)
        for node in ADDRESSES:
            world.doubles[node] = SuperviseDouble(node, store, keys, world)
        await world.publish()
        await store.put(keys.master, ADDRESSES["n1"].encode())
        async with (
            grpc_server(world.doubles["n1"], seen_tokens) as p1,
            grpc_server(world.doubles["n2"], seen_tokens) as p2,
            grpc_server(world.doubles["n3"], seen_tokens) as p3,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(proxy_double, store, keys, "app1", lease.id)
            tg.start_soon(proxy_double, store, keys, "n1", lease.id)
            await put_ack(store, keys, "app1", ADDRESSES["n1"], 1, lease.id)
            await put_ack(store, keys, "n1", ADDRESSES["n1"], 1, lease.id)

            async def settle_later() -> None:
                # PAF's next monitor gives the new primary the top score.
                while not world.constraint:  # noqa: ASYNC110 - waits on the pipeline's migrate
                    await anyio.sleep(0.02)
                await anyio.sleep(0.3)
                world.settled = True
                await world.publish()

            tg.start_soon(settle_later)
            settings = FailoverSettings(
                endpoints=[f"127.0.0.1:{p}" for p in (p1, p2, p3)],
                pause_timeout=timedelta(seconds=1),
                pause_expiry=timedelta(seconds=5),
                settle_timeout=timedelta(seconds=5),
                poll_interval=timedelta(milliseconds=20),
                lock_ttl=timedelta(seconds=2),
            )
            clients = [SuperviseEndpoint(ep, token=TOKEN) for ep in settings.endpoints]
            try:
                async with EtcdCoordinator(store, keys, lock_ttl=TTL) as coordinator:
                    pipeline = Pipeline(
                        clients,
                        coordinator,
                        NodeStatusCluster(
                            store,
                            keys,
                            max_age=timedelta(seconds=10),
                            poll_interval=settings.poll_interval,
                            max_lag_bytes=settings.max_lag_bytes,
                        ),
                        pipeline_options(settings, "n3"),
                    )
                    with anyio.fail_after(30):
                        report = await pipeline.run()
            finally:
                for client in clients:
                    client.close()
            tg.cancel_scope.cancel()
        assert report.target is not None
        assert (report.old_primary, report.target.node) == ("n1", "n3")
        assert report.proxies_acknowledged == ["app1", "n1"]
        assert report.needs_human == []
        assert world.primary == "n3"
        assert not world.constraint
        # Resume happened before unmigrate; unmigrate only after settling.
        last_resume = max(i for i, e in enumerate(world.events) if e.startswith("resume"))
        assert (
            world.events.index(next(e for e in world.events if e.startswith("unmigrate")))
            > last_resume
        )
        assert all(not d.paused for d in world.doubles.values())
        assert await store.get(keys.lock) is None
        assert seen_tokens
        assert set(seen_tokens) == {f"Bearer {TOKEN}"}
        await store.revoke_lease(lease.id)


@pytest.mark.parametrize(
    ("troubled", "fencing", "named"),
    [
        (
            (
                InstanceTrouble(
                    resource="pgsqld",
                    node="n1",
                    role="Promoted",
                    failed=True,
                    blocked=True,
                    managed=False,
                ),
            ),
            (),
            "instance pgsqld (Promoted) on n1: failed, blocked, unmanaged",
        ),
        (
            (),
            (FencingRecord(target="n3", action="off", state="pending", origin="n2"),),
            "fencing off of n3 pending; requested by n2",
        ),
    ],
)
async def test_switchover_refuses_before_pausing_while_pacemaker_needs_a_human(
    etcd: EtcdMember,
    troubled: tuple[InstanceTrouble, ...],
    fencing: tuple[FencingRecord, ...],
    named: str,
) -> None:
    # The doubles answer HEALTHY like a supervise that predates the health reason: the
    # pre-flight, reading the records in etcd, must still refuse.
    keys = layout()
    async with open_etcd(etcd.settings()) as store:
        lease = await store.grant_lease(timedelta(seconds=30))
        world = World(store, keys, lease.id, troubled=troubled, fencing=fencing)
        for node in ADDRESSES:
            world.doubles[node] = SuperviseDouble(node, store, keys, world)
        await world.publish()
        await store.put(keys.master, ADDRESSES["n1"].encode())
        async with (
            grpc_server(world.doubles["n1"], []) as p1,
            grpc_server(world.doubles["n2"], []) as p2,
        ):
            settings = FailoverSettings(
                endpoints=[f"127.0.0.1:{p}" for p in (p1, p2)], lock_ttl=timedelta(seconds=2)
            )
            clients = [SuperviseEndpoint(ep, token=TOKEN) for ep in settings.endpoints]
            try:
                async with EtcdCoordinator(store, keys, lock_ttl=TTL) as coordinator:
                    pipeline = Pipeline(
                        clients,
                        coordinator,
                        NodeStatusCluster(
                            store,
                            keys,
                            max_age=timedelta(seconds=10),
                            poll_interval=settings.poll_interval,
                            max_lag_bytes=settings.max_lag_bytes,
                        ),
                        pipeline_options(settings, None),
                    )
                    with pytest.raises(FailoverAborted) as refused, anyio.fail_after(30):
                        await pipeline.run()
            finally:
                for client in clients:
                    client.close()
        assert "Pacemaker needs a human first" in str(refused.value)
        assert named in str(refused.value)
        assert world.events == []  # nothing paused, nothing moved
        assert await store.get(keys.lock) is None
        await store.revoke_lease(lease.id)
