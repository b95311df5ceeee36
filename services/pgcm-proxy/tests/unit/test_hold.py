"""The proxy's hold: PAUSE while ``<ns>/hold`` names the routed address, RESUME after."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio
import prometheus_client  # noqa: F401 - first import outside the loop (blockbuster): metrics load it lazily
import pytest
from structlog.testing import capture_logs

from pgcm_common.errors import EtcdError
from pgcm_common.etcd import Deleted, KeyValue
from pgcm_common.pausing import PauseController
from pgcm_common.records import HoldRecord, now_utc
from pgcm_proxy.hold import Holder
from pgcm_proxy.metrics import ProxyMetrics
from pgcm_testkit.eventually import eventually
from pgcm_testkit.fakes.pgbouncer import FakePgBouncerAdmin

KEY = b"/pg/hold"
LOST = "10.0.0.11"
NEW = "10.0.0.12"


def hold_event(
    revision: int, *, lost: str = LOST, deadline: datetime | None = None, raw: bytes | None = None
) -> KeyValue:
    since = now_utc()
    record = HoldRecord(
        lost_node="n1",
        lost_address=lost,
        reason="node n1 is offline",
        since=since,
        deadline=deadline or since + timedelta(seconds=30),
        writer="n2",
    )
    value = raw if raw is not None else record.to_json()
    return KeyValue(key=KEY, value=value, create_revision=revision, mod_revision=revision,
                    version=1, lease=0)  # fmt: skip


@dataclass
class World:
    holder: Holder
    bouncer: FakePgBouncerAdmin
    metrics: ProxyMetrics
    published: list[str | None] = field(default_factory=lambda: [LOST])

    def outcome_count(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "pgcm_proxy_holds_total", {"outcome": outcome}
        )
        return value or 0.0


@asynccontextmanager
async def running(
    limit: timedelta = timedelta(seconds=60),
    published: Callable[[World], str | None] | None = None,
) -> AsyncIterator[World]:
    bouncer = FakePgBouncerAdmin()
    metrics = ProxyMetrics()
    world: World

    async def published_host() -> str | None:
        if published is not None:
            return published(world)
        return world.published[-1]

    holder = Holder(
        PauseController([bouncer]),
        limit=limit,
        published_host=published_host,
        metrics=metrics,
    )
    world = World(holder, bouncer, metrics)
    async with anyio.create_task_group() as tg:
        tg.start_soon(holder.run)
        with anyio.fail_after(10):
            yield world
        tg.cancel_scope.cancel()


async def paused(world: World) -> bool:
    return world.bouncer.paused


async def resumed(world: World) -> bool:
    return not world.bouncer.paused and not world.holder.holding


async def test_a_hold_naming_the_routed_address_pauses_until_the_new_primary_is_applied() -> None:
    async with running() as world:
        world.holder.applied(LOST)
        world.holder.offer(hold_event(5))
        await eventually(lambda: paused(world))
        assert world.holder.holding
        world.holder.applied(NEW)
        await eventually(lambda: resumed(world))
    assert world.outcome_count("applied") == 1
    assert world.bouncer.commands == ["PAUSE", "RESUME"]


async def test_a_hold_for_another_address_pauses_nothing() -> None:
    async with running() as world:
        world.holder.applied(NEW)
        world.holder.offer(hold_event(5))
        await anyio.sleep(0.1)
        assert world.bouncer.commands == []
        assert not world.holder.holding


async def test_the_hold_goes_and_etcd_names_the_same_primary_so_it_is_released() -> None:
    async with running() as world:
        world.holder.applied(LOST)
        world.holder.offer(hold_event(5))
        await eventually(lambda: paused(world))
        world.holder.offer(Deleted(KEY, 6))
        await eventually(lambda: resumed(world))
    assert world.outcome_count("released") == 1


async def test_a_deleted_hold_waits_for_a_new_primary_etcd_already_names() -> None:
    async with running() as world:
        world.holder.applied(LOST)
        world.holder.offer(hold_event(5))
        await eventually(lambda: paused(world))
        world.published.append(NEW)  # published, not applied yet
        world.holder.offer(Deleted(KEY, 6))
        await anyio.sleep(0.7)  # more than one re-check of etcd
        assert world.bouncer.paused
        world.holder.applied(NEW)
        await eventually(lambda: resumed(world))
    assert world.outcome_count("applied") == 1


async def test_etcd_unreachable_when_released_keeps_holding_until_it_answers() -> None:
    answers: list[str | None] = []

    def published(_world: World) -> str | None:
        if not answers:
            raise EtcdError("etcd down")
        return answers[-1]

    async with running(published=published) as world:
        world.holder.applied(LOST)
        world.holder.offer(hold_event(5))
        await eventually(lambda: paused(world))
        with capture_logs() as logs:
            world.holder.offer(Deleted(KEY, 6))
            await anyio.sleep(0.7)
        assert world.bouncer.paused
        assert any(entry["event"] == "etcd.hold.check_failed" for entry in logs)
        answers.append(LOST)
        await eventually(lambda: resumed(world))


async def test_hold_limit_bounds_the_hold_and_the_same_record_never_holds_again() -> None:
    async with running(limit=timedelta(milliseconds=200)) as world:
        world.holder.applied(LOST)
        world.holder.offer(hold_event(5))
        await eventually(lambda: paused(world))
        await eventually(lambda: resumed(world))
        world.holder.applied(LOST)  # a re-apply of the same address wakes the loop
        await anyio.sleep(0.1)
        assert not world.bouncer.paused
        world.holder.offer(hold_event(9))  # a new loss holds again
        await eventually(lambda: paused(world))
    assert world.outcome_count("expired") == 1


async def test_a_record_past_its_deadline_pauses_nothing() -> None:
    async with running() as world:
        world.holder.applied(LOST)
        world.holder.offer(hold_event(5, deadline=datetime(2020, 1, 1, tzinfo=UTC)))
        await anyio.sleep(0.1)
        assert world.bouncer.commands == []


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"lost_node": "n1"}',
        (
            b'{"lost_node":"n1","lost_address":"10.0.0.11 port=1","reason":"x",'
            b'"since":"2026-01-01T00:00:00Z","deadline":"2999-01-01T00:00:00Z","writer":"n2"}'
        ),
    ],
)
async def test_a_malformed_or_hostile_hold_record_is_ignored(raw: bytes) -> None:
    async with running() as world:
        world.holder.applied(LOST)
        with capture_logs() as logs:
            world.holder.offer(hold_event(5, raw=raw))
        await anyio.sleep(0.1)
        assert world.bouncer.commands == []
        assert [entry["event"] for entry in logs] == ["etcd.hold.malformed"]


async def test_stopping_while_holding_resumes_pgbouncer() -> None:
    async with running() as world:
        world.holder.applied(LOST)
        world.holder.offer(hold_event(5))
        await eventually(lambda: paused(world))
    assert not world.bouncer.paused
    assert world.bouncer.commands[-1] == "RESUME"


async def test_a_pause_still_waiting_on_a_transaction_is_undone_when_the_hold_ends() -> None:
    async with running() as world, world.bouncer.hold_transaction():
        world.holder.applied(LOST)
        world.holder.offer(hold_event(5))
        await eventually(lambda: paused(world))
        world.holder.applied(NEW)
        await eventually(lambda: resumed(world))


async def test_start_up_resumes_a_pgbouncer_left_paused() -> None:
    async with running() as world:
        world.bouncer.paused = True  # an earlier run died holding it
        await world.holder.resume_orphaned()
        assert not world.bouncer.paused


async def test_a_zero_limit_never_holds() -> None:
    async with running(limit=timedelta(0)) as world:
        world.holder.applied(LOST)
        world.holder.offer(hold_event(5))
        await world.holder.resume_orphaned()
        await anyio.sleep(0.1)
        assert world.bouncer.commands == []
