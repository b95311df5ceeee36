from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.testing import ChannelFor
from structlog.testing import capture_logs

from pgcm_common.errors import EtcdUnavailable, PgcmError
from pgcm_common.pacemaker import (
    Ban,
    ClusterState,
    NodeAddressUnknown,
    PacemakerCommandFailed,
    PromotionScore,
    Role,
    StaticNodeAddresses,
    parse_crm_mon,
)
from pgcm_common.pgbouncer import PgBouncerEndpoint, PgBouncerUnreachable
from pgcm_common.proto.failover import (
    Empty,
    FailoverStub,
    HealthCheckResponseStatus,
    MigrateRequest,
    PauseRequest,
)
from pgcm_supervise.errors import (
    ClusterWithoutQuorum,
    InvalidRequest,
    NoMigrationTarget,
    PauseSuperseded,
    PgBouncersFailed,
    UnknownMigrationTarget,
)
from pgcm_supervise.pacemaker_control import FakePacemakerControl, choose_target
from pgcm_supervise.server import FailoverServer, FailoverServerOptions, grpc_error
from pgcm_testkit.eventually import eventually
from pgcm_testkit.fakes.pacemaker import FakeCrmMonReader, state_from_file
from pgcm_testkit.fakes.pgbouncer import FakePgBouncerAdmin

FIXTURES = Path(__file__).parents[4] / "libs/pgcm-common/tests/fixtures/pacemaker"
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
ADDRESSES = {"n1": "10.250.0.11", "n2": "10.250.0.12", "n3": "10.250.0.13"}


def healthy_state() -> ClusterState:
    return state_from_file(FIXTURES / "01-healthy-n1-primary.xml", resource_id="pgsqld")


def sync_state() -> ClusterState:
    return state_from_file(FIXTURES / "10-stock-pgsql-ra-healthy-n1.xml", resource_id="pgsql")


def minority_state() -> ClusterState:
    return state_from_file(FIXTURES / "04-partitioned-n1-view-from-n1.xml", resource_id="pgsqld")


def is_paused(bouncer: FakePgBouncerAdmin) -> bool:
    return bouncer.paused


class FixedClock:
    def now(self) -> datetime:
        return NOW


@dataclass
class EtcdProbe:
    error: Exception | None = None
    calls: int = 0

    async def __call__(self) -> None:
        await anyio.lowlevel.checkpoint()
        self.calls += 1
        if self.error is not None:
            raise self.error


@dataclass
class World:
    bouncers: list[FakePgBouncerAdmin]
    crm: FakeCrmMonReader
    control: FakePacemakerControl
    etcd: EtcdProbe
    server: FailoverServer
    stub: FailoverStub
    pause_states: list[bool] = field(default_factory=list)

    @property
    def bouncer(self) -> FakePgBouncerAdmin:
        return self.bouncers[0]


def make_server(
    bouncers: list[FakePgBouncerAdmin],
    crm: FakeCrmMonReader,
    control: FakePacemakerControl,
    etcd: EtcdProbe,
    states: list[bool],
    *,
    migrate_read_ahead: timedelta = timedelta(0),
) -> FailoverServer:
    return FailoverServer(
        bouncers,
        crm,
        control,
        addresses=StaticNodeAddresses(ADDRESSES),
        etcd_probe=etcd,
        clock=FixedClock(),
        options=FailoverServerOptions(
            health_timeout=timedelta(seconds=1),
            cleanup_timeout=timedelta(seconds=1),
            on_pause_state=states.append,
            migrate_read_ahead=migrate_read_ahead,
        ),
    )


@asynccontextmanager
async def open_world(
    *, pgbouncers: int = 2, migrate_read_ahead: timedelta = timedelta(0)
) -> AsyncIterator[World]:
    bouncers = [
        FakePgBouncerAdmin(endpoint=PgBouncerEndpoint(host="127.0.0.1", port=6432 + i))
        for i in range(pgbouncers)
    ]
    crm, control, etcd = FakeCrmMonReader(healthy_state()), FakePacemakerControl(), EtcdProbe()
    states: list[bool] = []
    server = make_server(
        bouncers, crm, control, etcd, states, migrate_read_ahead=migrate_read_ahead
    )
    # Not a fixture: pytest-asyncio tears fixtures down in another task, and a task group
    # must be exited by the task that entered it.
    async with server, ChannelFor([server]) as channel:
        yield World(bouncers, crm, control, etcd, server, FailoverStub(channel), states)


async def expect_status(status: Status, call: object) -> GRPCError:
    with pytest.raises(GRPCError) as caught, anyio.fail_after(5):
        await call  # type: ignore[misc]
    assert caught.value.status is status
    return caught.value


# -- health_check ---------------------------------------------------------------------


async def test_health_check_is_healthy_when_pgbouncer_pacemaker_and_etcd_answer() -> None:
    async with open_world() as world:
        with anyio.fail_after(5):
            response = await world.stub.health_check(Empty())
        assert response.status is HealthCheckResponseStatus.HEALTHY
        assert response.reasons == []
        assert world.etcd.calls == 1
        assert all("SHOW VERSION" in b.commands for b in world.bouncers)


async def test_health_check_reports_every_failing_dependency_with_reasons() -> None:
    async with open_world() as world:
        world.bouncers[1].reachable = False
        world.crm.set_state(minority_state())
        world.etcd.error = EtcdUnavailable("no endpoint answered")
        with capture_logs() as logs, anyio.fail_after(5):
            response = await world.stub.health_check(Empty())
        assert response.status is HealthCheckResponseStatus.UNHEALTHY
        assert response.reasons == [
            "etcd: no endpoint answered",
            "pacemaker: no quorum",
            "pgbouncer 127.0.0.1:6433: cannot connect to 127.0.0.1:6433 (fake)",
        ]
        assert [e["reasons"] for e in logs if e["event"] == "health_check.unhealthy"] == [
            response.reasons
        ]


async def test_health_check_names_a_blocked_instance_and_pending_fencing() -> None:
    blocked = (
        (FIXTURES / "01-healthy-n1-primary.xml")
        .read_text()
        .replace(
            'role="Promoted" active="true" orphaned="false" blocked="false" managed="true" '
            'failed="false"',
            'role="Promoted" active="true" orphaned="false" blocked="true" managed="false" '
            'failed="true"',
        )
    )
    fencing = (
        '<fence_history><fence_event status="pending" action="reboot" target="n1" '
        'client="pacemaker-controld.1" origin="n2"/></fence_history></pacemaker-result>'
    )
    state = parse_crm_mon(blocked.replace("</pacemaker-result>", fencing), resource_id="pgsqld")
    async with open_world() as world:
        world.crm.set_state(state)
        with anyio.fail_after(5):
            response = await world.stub.health_check(Empty())
        assert response.status is HealthCheckResponseStatus.UNHEALTHY
        assert response.reasons == [
            (
                "pacemaker: pgsqld (Promoted) on n1 is failed, blocked; "
                "fencing (reboot) of n1 pending, requested by n2"
            )
        ]


@pytest.mark.parametrize(
    ("fixture", "reason"),
    [
        (
            "42-blocked-n2-stonith-disabled.xml",
            "pacemaker: pgsqld (Promoted) on n2 is failed, blocked",
        ),
        (
            "40-fencing-pending-n1-postgres-hung.xml",
            (
                "pacemaker: pgsqld (Promoted) on n1 is failed; "
                "fencing (off) of n1 pending, requested by n3"
            ),
        ),
    ],
)
async def test_health_check_is_unhealthy_in_real_blocked_or_fencing_states(
    fixture: str, reason: str
) -> None:
    async with open_world() as world:
        world.crm.set_state(state_from_file(FIXTURES / fixture, resource_id="pgsqld"))
        with anyio.fail_after(5):
            response = await world.stub.health_check(Empty())
        assert response.status is HealthCheckResponseStatus.UNHEALTHY
        assert response.reasons == [reason]


async def test_health_check_is_unhealthy_when_crm_mon_fails() -> None:
    async with open_world() as world:
        world.crm.fail_with(PacemakerCommandFailed(("crm_mon",), 102, "not connected"))
        with anyio.fail_after(5):
            response = await world.stub.health_check(Empty())
        assert response.status is HealthCheckResponseStatus.UNHEALTHY
        assert len(response.reasons) == 1
        assert response.reasons[0].startswith("pacemaker: crm_mon exited 102")


# -- pause / resume -------------------------------------------------------------------


async def test_pause_pauses_every_pgbouncer_and_answers_timestamps() -> None:
    async with open_world() as world:
        with anyio.fail_after(5):
            response = await world.stub.pause(PauseRequest(timeout=5, expiry=60))
        assert all(b.paused for b in world.bouncers)
        assert response.created_at == NOW
        assert response.expires_at == NOW + timedelta(seconds=60)
        assert world.server.pauser.paused
        assert world.pause_states == [True]


async def test_pause_millisecond_fields_replace_the_seconds() -> None:
    async with open_world() as world:
        with anyio.fail_after(5):
            response = await world.stub.pause(
                PauseRequest(timeout=1, expiry=1, timeout_ms=3000, expiry_ms=2500)
            )
        assert response.expires_at == NOW + timedelta(milliseconds=2500)


@pytest.mark.parametrize(
    "request_",
    [
        PauseRequest(timeout=-1, expiry=10),
        PauseRequest(timeout=5, expiry=-1),
        PauseRequest(timeout=5, expiry=10, timeout_ms=-5),
        PauseRequest(timeout=0, expiry=10),
        PauseRequest(timeout=5, expiry=0),
    ],
)
async def test_pause_with_invalid_durations_is_invalid_argument(
    request_: PauseRequest,
) -> None:
    async with open_world() as world:
        await expect_status(Status.INVALID_ARGUMENT, world.stub.pause(request_))
        assert not any(b.paused for b in world.bouncers)
        assert all("PAUSE" not in b.commands for b in world.bouncers)


async def test_pause_blocked_by_a_transaction_exceeds_deadline_and_resumes() -> None:
    async with open_world() as world:
        async with world.bouncer.hold_transaction():
            error = await expect_status(
                Status.DEADLINE_EXCEEDED, world.stub.pause(PauseRequest(timeout_ms=50, expiry=60))
            )
        assert error.message == "exceeded pause timeout"
        assert not any(b.paused for b in world.bouncers)
        # The sibling that did pause is resumed too, after its PAUSE ended.
        assert world.bouncers[1].commands[-2:] == ["PAUSE", "RESUME"]
        assert not world.server.pauser.paused
        assert world.server._expiry is None


async def test_pause_failure_on_one_pgbouncer_resumes_the_others() -> None:
    async with open_world() as world:
        world.bouncers[1].reachable = False
        error = await expect_status(
            Status.UNAVAILABLE, world.stub.pause(PauseRequest(timeout=5, expiry=60))
        )
        assert "127.0.0.1:6433" in (error.message or "")
        assert world.bouncers[0].commands[-2:] == ["PAUSE", "RESUME"]
        assert not world.bouncers[0].paused


async def test_expiry_resumes_pgbouncer() -> None:
    async with open_world() as world:
        with anyio.fail_after(5):
            # Long enough that the PAUSE answer is back first even on a loaded machine.
            await world.stub.pause(PauseRequest(timeout=5, expiry_ms=300))
            await eventually(lambda: _all_resumed(world))
            # The gauge's callback runs just after RESUME returns: wait for it too.
            await eventually(lambda: _pause_states_settled(world))
        assert world.pause_states == [True, False]


async def _pause_states_settled(world: World) -> bool:
    return len(world.pause_states) >= 2  # paused, then resumed


async def _all_resumed(world: World) -> bool:
    return not any(b.paused for b in world.bouncers)


async def test_resume_cancels_the_expiry_timer() -> None:
    async with open_world() as world:
        with anyio.fail_after(5):
            await world.stub.pause(PauseRequest(timeout=5, expiry_ms=50))
            await world.stub.resume(Empty())
        assert world.server._expiry is None
        # Someone else pauses PgBouncer afterwards: the cancelled timer must not lift it.
        world.bouncer.paused = True
        await anyio.sleep(0.2)
        assert world.bouncer.paused
        assert world.bouncer.commands.count("RESUME") == 1


async def test_second_pause_is_not_lifted_by_the_first_pause_timer() -> None:
    async with open_world() as world:
        with anyio.fail_after(5):
            await world.stub.pause(PauseRequest(timeout=5, expiry_ms=50))
            await world.stub.pause(PauseRequest(timeout=5, expiry=60))
        await anyio.sleep(0.2)
        assert all(b.paused for b in world.bouncers)
        assert all("RESUME" not in b.commands for b in world.bouncers)


async def test_expiry_timer_never_lifts_a_pause_started_after_it_fired() -> None:
    bouncer = FakePgBouncerAdmin()
    server = make_server(
        [bouncer], FakeCrmMonReader(healthy_state()), FakePacemakerControl(), EtcdProbe(), []
    )
    results: list[bool] = []

    async def stale_timer_fires(generation: int) -> None:
        results.append(await server.pauser.resume(reason="expired", only_generation=generation))

    with anyio.fail_after(5):
        async with server:
            await server.pauser.pause()
            generation = server.pauser.generation
            async with anyio.create_task_group() as tg, bouncer.hold_transaction():
                tg.start_soon(server.pauser.pause)  # newer pause, waiting on a transaction
                await eventually(lambda: _true(value=bouncer.commands.count("PAUSE") == 2))
                tg.start_soon(stale_timer_fires, generation)
                await anyio.wait_all_tasks_blocked()
            assert results == [False]
            assert bouncer.paused
            assert "RESUME" not in bouncer.commands


async def _true(*, value: bool) -> bool:
    return value


async def test_resume_is_idempotent() -> None:
    async with open_world() as world:
        with anyio.fail_after(5):
            first = await world.stub.resume(Empty())
            second = await world.stub.resume(Empty())
        assert first.created_at == second.created_at == NOW
        assert not any(b.paused for b in world.bouncers)


async def test_resume_aborts_a_pause_still_waiting() -> None:
    async with open_world() as world:
        async with world.bouncer.hold_transaction(), anyio.create_task_group() as tg:
            outcome: list[GRPCError] = []

            async def pause() -> None:
                outcome.append(
                    await expect_status(
                        Status.ABORTED, world.stub.pause(PauseRequest(timeout=30, expiry=60))
                    )
                )

            tg.start_soon(pause)
            with anyio.fail_after(5):
                await eventually(lambda: _true(value="PAUSE" in world.bouncer.commands))
                await world.stub.resume(Empty())
        assert len(outcome) == 1
        assert not any(b.paused for b in world.bouncers)


async def test_resume_unreachable_pgbouncer_is_unavailable() -> None:
    async with open_world() as world:
        world.bouncer.reachable = False
        await expect_status(Status.UNAVAILABLE, world.stub.resume(Empty()))


async def test_exit_resumes_a_paused_pgbouncer() -> None:
    bouncer, states = FakePgBouncerAdmin(), list[bool]()
    server = make_server(
        [bouncer], FakeCrmMonReader(healthy_state()), FakePacemakerControl(), EtcdProbe(), states
    )
    with anyio.fail_after(5):
        async with server, ChannelFor([server]) as channel:
            await FailoverStub(channel).pause(PauseRequest(timeout=5, expiry=60))
            assert bouncer.paused
    assert not is_paused(bouncer)  # a call: mypy would keep the narrowing above
    assert states == [True, False]


async def test_exit_when_cancelled_still_resumes() -> None:
    bouncer = FakePgBouncerAdmin()
    server = make_server(
        [bouncer], FakeCrmMonReader(healthy_state()), FakePacemakerControl(), EtcdProbe(), []
    )
    with anyio.CancelScope() as scope:
        async with server:
            await server.pause(PauseRequest(timeout=5, expiry=60))
            scope.cancel()
            await anyio.sleep_forever()
    assert not bouncer.paused


async def test_exit_without_pause_sends_nothing() -> None:
    bouncer = FakePgBouncerAdmin()
    async with make_server(
        [bouncer], FakeCrmMonReader(healthy_state()), FakePacemakerControl(), EtcdProbe(), []
    ):
        pass
    assert bouncer.commands == []


@pytest.mark.parametrize(("held", "commands"), [(True, []), (False, ["RESUME"])])
async def test_reconcile_on_startup_resumes_only_without_a_failover_lock(
    *, held: bool, commands: list[str]
) -> None:
    bouncer = FakePgBouncerAdmin()
    bouncer.paused = True

    async def lock_is_held() -> bool:
        return held

    async with make_server(
        [bouncer], FakeCrmMonReader(healthy_state()), FakePacemakerControl(), EtcdProbe(), []
    ) as server:
        with capture_logs() as logs:
            assert await server.reconcile_on_startup(lock_is_held) is not held
    assert bouncer.commands == commands
    assert bouncer.paused is held
    assert [e["outcome"] for e in logs if e["event"] == "pause.reconcile"] == [
        "skipped" if held else "resumed"
    ]


# -- migrate / unmigrate --------------------------------------------------------------


async def test_migrate_moves_to_the_highest_promotion_score() -> None:
    async with open_world() as world:
        with anyio.fail_after(5):
            response = await world.stub.migrate(Empty())
        assert (response.migrating_to, response.address) == ("n2", "10.250.0.12")
        assert response.created_at == NOW
        assert world.control.calls == [("prefer", "pgsql-ha", "n2")]


async def test_migrate_prefers_the_sync_standby_of_the_legacy_agent() -> None:
    async with open_world() as world:
        world.crm.set_state(sync_state())
        with anyio.fail_after(5):
            response = await world.stub.migrate(Empty())
        assert response.migrating_to == "n2"


async def test_migrate_to_a_named_standby() -> None:
    async with open_world() as world:
        with anyio.fail_after(5):
            response = await world.stub.migrate_to(MigrateRequest(target="n3"))
        assert (response.migrating_to, response.address) == ("n3", "10.250.0.13")
        assert world.control.calls == [("prefer", "pgsql-ha", "n3")]


async def test_migrate_to_empty_target_is_the_cluster_choice() -> None:
    async with open_world() as world:
        with anyio.fail_after(5):
            response = await world.stub.migrate_to(MigrateRequest(target=""))
        assert response.migrating_to == "n2"


@pytest.mark.parametrize(
    ("target", "status"),
    [("nope", Status.INVALID_ARGUMENT)],
)
async def test_migrate_to_a_bad_target_is_refused_without_moving(
    target: str,
    status: Status,
) -> None:
    async with open_world() as world:
        await expect_status(status, world.stub.migrate_to(MigrateRequest(target=target)))
        assert world.control.calls == []


async def test_migrate_without_quorum_is_failed_precondition() -> None:
    async with open_world() as world:
        world.crm.set_state(minority_state())
        await expect_status(Status.FAILED_PRECONDITION, world.stub.migrate(Empty()))
        assert world.control.calls == []


async def test_migrate_when_crm_resource_fails_is_unavailable() -> None:
    async with open_world() as world:
        world.control.fail_with(PacemakerCommandFailed(("crm_resource",), 1, "boom"))
        await expect_status(Status.UNAVAILABLE, world.stub.migrate(Empty()))


async def test_migrate_when_crm_mon_fails_is_unavailable() -> None:
    async with open_world() as world:
        world.crm.fail_with(PacemakerCommandFailed(("crm_mon",), 102, "not connected"))
        await expect_status(Status.UNAVAILABLE, world.stub.migrate(Empty()))


async def test_migrate_without_an_address_is_refused_before_moving() -> None:
    control = FakePacemakerControl()
    server = FailoverServer(
        [FakePgBouncerAdmin()],
        FakeCrmMonReader(healthy_state()),
        control,
        addresses=StaticNodeAddresses({"n1": "10.250.0.11"}),
        etcd_probe=EtcdProbe(),
        clock=FixedClock(),
    )
    async with server, ChannelFor([server]) as channel:
        await expect_status(Status.FAILED_PRECONDITION, FailoverStub(channel).migrate(Empty()))
    assert control.calls == []


async def test_unmigrate_clears_the_clone_constraint() -> None:
    async with open_world() as world:
        with anyio.fail_after(5):
            response = await world.stub.unmigrate(Empty())
        assert response.created_at == NOW
        assert world.control.calls == [("clear", "pgsql-ha")]


async def test_unmigrate_failure_is_unavailable() -> None:
    async with open_world() as world:
        world.control.fail_with(PacemakerCommandFailed(("crm_resource",), 1, "boom"))
        await expect_status(Status.UNAVAILABLE, world.stub.unmigrate(Empty()))


# -- target choice and the error table ------------------------------------------------


def test_choose_target_breaks_score_ties_by_name() -> None:
    state = dataclasses.replace(
        healthy_state(),
        promotion_scores=(
            PromotionScore("n1", 1001),
            PromotionScore("n3", 1000),
            PromotionScore("n2", 1000),
        ),
    )
    assert choose_target(state).name == "n2"


def test_choose_target_breaks_score_ties_by_sync_state_first() -> None:
    state = sync_state()
    tied = dataclasses.replace(
        state,
        promotion_scores=(
            PromotionScore("n1", 1000),
            PromotionScore("n2", 100),
            PromotionScore("n3", 100),
        ),
        legacy_pgsql=tuple(
            dataclasses.replace(
                a, status_raw={"n2": "HS:async", "n3": "HS:sync"}.get(a.node, "PRI")
            )
            for a in state.legacy_pgsql
        ),
    )
    assert choose_target(tied).name == "n3"


def test_choose_target_ignores_negative_scores() -> None:
    state = dataclasses.replace(
        healthy_state(),
        promotion_scores=(
            PromotionScore("n1", 1001),
            PromotionScore("n2", -1),
            PromotionScore("n3", -1000),
        ),
    )
    with pytest.raises(NoMigrationTarget):
        choose_target(state)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidRequest("timeout", "negative"), Status.INVALID_ARGUMENT),
        (UnknownMigrationTarget("x", ("n1",)), Status.INVALID_ARGUMENT),
        (ClusterWithoutQuorum(), Status.FAILED_PRECONDITION),
        (NoMigrationTarget("none"), Status.FAILED_PRECONDITION),
        (NodeAddressUnknown("n2", "unknown"), Status.FAILED_PRECONDITION),
        (PauseSuperseded(), Status.ABORTED),
        (TimeoutError(), Status.DEADLINE_EXCEEDED),
        (PgBouncerUnreachable("down"), Status.UNAVAILABLE),
        (PgBouncersFailed("pause", {"a": PgBouncerUnreachable("down")}), Status.UNAVAILABLE),
        (PacemakerCommandFailed(("crm_mon",), 1, ""), Status.UNAVAILABLE),
        (EtcdUnavailable("down"), Status.UNAVAILABLE),
        (PgcmError("other"), Status.INTERNAL),
    ],
)
def test_error_table_maps_domain_errors_to_statuses(error: Exception, status: Status) -> None:
    mapped = grpc_error(error, timeout_message="exceeded pause timeout")
    assert mapped.status is status
    assert mapped.status is not Status.UNIMPLEMENTED
    if isinstance(error, TimeoutError):
        assert mapped.message == "exceeded pause timeout"


# -- review fixes: pause protection, reconcile, migrate checks ------------------------


def with_primary_on(state: ClusterState, node: str) -> ClusterState:
    instances = tuple(
        dataclasses.replace(i, role=Role.PROMOTED if i.node == node else Role.UNPROMOTED)
        for i in state.instances
    )
    return dataclasses.replace(state, instances=instances)


async def test_failing_new_pause_keeps_the_earlier_pause_expiry() -> None:
    async with open_world() as world:
        with anyio.fail_after(5):
            await world.stub.pause(PauseRequest(timeout=5, expiry_ms=300))
            world.bouncers[1].reachable = False
            await expect_status(
                Status.UNAVAILABLE, world.stub.pause(PauseRequest(timeout=5, expiry=60))
            )
            # The undo could not reach bouncer 2: it is still paused, and so are we.
            assert world.server.pauser.paused
            world.bouncers[1].reachable = True
            await eventually(lambda: _all_resumed(world))
        assert not world.server.pauser.paused


async def test_failed_undo_keeps_paused_and_retries_the_resume() -> None:
    async with open_world() as world:
        async with world.bouncers[0].hold_transaction():
            world.bouncers[1].reachable = True
            with anyio.fail_after(5):
                pausing = world.stub.pause(PauseRequest(timeout_ms=200, expiry=60))
                async with anyio.create_task_group() as tg:

                    async def cut_off_bouncer_two() -> None:
                        await eventually(lambda: _true(value="PAUSE" in world.bouncers[1].commands))
                        world.bouncers[1].reachable = False

                    tg.start_soon(cut_off_bouncer_two)
                    await expect_status(Status.DEADLINE_EXCEEDED, pausing)
        assert world.bouncers[1].paused
        assert world.server.pauser.paused
        assert world.pause_states[-1] is True
        world.bouncers[1].reachable = True
        with anyio.fail_after(5):
            await eventually(lambda: _all_resumed(world))
            await eventually(lambda: _true(value=not world.server.pauser.paused))


async def test_reconcile_retries_while_the_lock_is_held_then_resumes() -> None:
    bouncer = FakePgBouncerAdmin()
    bouncer.paused = True
    answers = [True, True, False]

    async def lock_is_held() -> bool:
        await anyio.lowlevel.checkpoint()
        return answers.pop(0) if answers else False

    server = FailoverServer(
        [bouncer],
        FakeCrmMonReader(healthy_state()),
        FakePacemakerControl(),
        addresses=StaticNodeAddresses(ADDRESSES),
        etcd_probe=EtcdProbe(),
        clock=FixedClock(),
        options=FailoverServerOptions(reconcile_interval=timedelta(milliseconds=10)),
    )
    with anyio.fail_after(5):
        async with server, anyio.create_task_group() as tg:
            assert await tg.start(server.serve_reconcile, lock_is_held) is False
            await eventually(lambda: _true(value=not bouncer.paused))
    assert bouncer.commands == ["RESUME"]


async def test_reconcile_never_lifts_a_pause_requested_after_startup() -> None:
    bouncer = FakePgBouncerAdmin()

    async def lock_is_held() -> bool:
        await anyio.lowlevel.checkpoint()
        return True

    server = FailoverServer(
        [bouncer],
        FakeCrmMonReader(healthy_state()),
        FakePacemakerControl(),
        addresses=StaticNodeAddresses(ADDRESSES),
        etcd_probe=EtcdProbe(),
        clock=FixedClock(),
        options=FailoverServerOptions(reconcile_interval=timedelta(milliseconds=10)),
    )
    with anyio.fail_after(5):
        async with server, anyio.create_task_group() as tg:
            await tg.start(server.serve_reconcile, lock_is_held)
            await server.pause(PauseRequest(timeout=5, expiry=60))
            with capture_logs() as logs:
                await eventually(
                    lambda: _true(value=any(e.get("outcome") == "superseded" for e in logs))
                )
            assert bouncer.paused
            assert "RESUME" not in bouncer.commands


async def test_resume_for_shutdown_resumes_and_refuses_new_pauses() -> None:
    async with open_world() as world:
        with anyio.fail_after(5):
            await world.stub.pause(PauseRequest(timeout=5, expiry=60))
            await world.server.resume_for_shutdown()
            assert not any(b.paused for b in world.bouncers)
            await expect_status(
                Status.UNAVAILABLE, world.stub.pause(PauseRequest(timeout=5, expiry=60))
            )


async def test_migrate_to_the_current_primary_is_success_without_moving() -> None:
    async with open_world() as world:
        with anyio.fail_after(5):
            response = await world.stub.migrate_to(MigrateRequest(target="n1"))
        assert (response.migrating_to, response.address) == ("n1", "10.250.0.11")
        assert world.control.calls == []


async def test_migrate_onto_a_banned_target_asks_crm_resource_which_drops_the_ban() -> None:
    ban = Ban("cli-ban-pgsql-ha-on-n2", "pgsql-ha", "n2", -1_000_000, promoted_only=True)
    async with open_world() as world:
        world.crm.set_state(dataclasses.replace(healthy_state(), bans=(ban,)))
        with anyio.fail_after(5):
            response = await world.stub.migrate_to(MigrateRequest(target="n2"))
        assert response.migrating_to == "n2"
        assert world.control.calls == [("move", "pgsql-ha", "n2")]


async def test_a_refused_direct_write_falls_back_to_crm_resource() -> None:
    async with open_world() as world:
        world.control.prefer_error = PacemakerCommandFailed(("cibadmin",), 203, "schema")
        with capture_logs() as logs, anyio.fail_after(5):
            response = await world.stub.migrate(Empty())
        assert response.migrating_to == "n2"
        assert world.control.calls == [("move", "pgsql-ha", "n2")]
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
            "pacemaker.resource.prefer_failed"
        ]


class RacingControl:
    """crm_resource refuses because the target was promoted meanwhile (exit 108)."""

    def __init__(self, crm: FakeCrmMonReader, promoted: ClusterState | None) -> None:
        self.crm, self.promoted = crm, promoted

    async def prefer_promoted(self, resource: str, node: str) -> None:
        # A Pacemaker whose schema refuses the direct write: crm_resource is asked next.
        await anyio.lowlevel.checkpoint()
        raise PacemakerCommandFailed(("cibadmin",), 203, "Update does not conform to schema")

    async def move_promoted(self, resource: str, node: str) -> None:
        await anyio.lowlevel.checkpoint()
        if self.promoted is not None:
            self.crm.set_state(self.promoted)
        raise PacemakerCommandFailed(("crm_resource",), 108, "Requested item already exists")

    async def clear(self, resource: str) -> None:
        await anyio.lowlevel.checkpoint()


@pytest.mark.parametrize("promoted", [True, False])
async def test_migrate_refused_because_the_target_got_promoted_is_success(
    *, promoted: bool
) -> None:
    crm = FakeCrmMonReader(healthy_state())
    control = RacingControl(crm, with_primary_on(healthy_state(), "n2") if promoted else None)
    server = FailoverServer(
        [FakePgBouncerAdmin()],
        crm,
        control,
        addresses=StaticNodeAddresses(ADDRESSES),
        etcd_probe=EtcdProbe(),
        clock=FixedClock(),
    )
    async with server, ChannelFor([server]) as channel:
        stub = FailoverStub(channel)
        if promoted:
            with anyio.fail_after(5):
                response = await stub.migrate_to(MigrateRequest(target="n2"))
            assert response.migrating_to == "n2"
        else:
            await expect_status(Status.UNAVAILABLE, stub.migrate_to(MigrateRequest(target="n2")))


@pytest.mark.parametrize("score", [-1000, None])
def test_choose_target_refuses_a_named_node_without_a_usable_promotion_score(
    score: int | None,
) -> None:
    state = healthy_state()
    scores = tuple(s for s in state.promotion_scores if s.node != "n3")
    if score is not None:
        scores += (PromotionScore("n3", score),)
    with pytest.raises(NoMigrationTarget, match="promotion score"):
        choose_target(dataclasses.replace(state, promotion_scores=scores), "n3")


def test_choose_target_refuses_a_named_node_without_a_running_standby() -> None:
    state = healthy_state()
    instances = tuple(
        dataclasses.replace(i, role=Role.STOPPED, active=False) if i.node == "n3" else i
        for i in state.instances
    )
    with pytest.raises(NoMigrationTarget, match="unpromoted"):
        choose_target(dataclasses.replace(state, instances=instances), "n3")


# -- the PAUSE's read-ahead for the migrate ---------------------------------------------


async def test_a_migrate_after_a_pause_decides_on_the_read_the_pause_started() -> None:
    async with open_world(pgbouncers=1, migrate_read_ahead=timedelta(seconds=30)) as world:
        with anyio.fail_after(5):
            await world.stub.pause(PauseRequest(timeout=5, expiry=60))
            response = await world.stub.migrate(Empty())
        assert response.migrating_to == "n2"
        assert world.control.calls == [("prefer", "pgsql-ha", "n2")]
        assert world.crm.reads == 1
        # Used once: a second migrate (a retry) reads anew.
        with anyio.fail_after(5):
            await world.stub.migrate_to(MigrateRequest(target="n3"))
        assert world.crm.reads == 2


async def test_without_read_ahead_a_pause_reads_nothing_and_migrate_reads() -> None:
    async with open_world(pgbouncers=1, migrate_read_ahead=timedelta(0)) as world:
        with anyio.fail_after(5):
            await world.stub.pause(PauseRequest(timeout=5, expiry=60))
        assert world.crm.reads == 0
        with anyio.fail_after(5):
            await world.stub.migrate(Empty())
        assert world.crm.reads == 1


async def test_a_failed_read_ahead_makes_the_migrate_read_anew() -> None:
    async with open_world(pgbouncers=1, migrate_read_ahead=timedelta(seconds=30)) as world:
        world.crm.fail_with(PacemakerCommandFailed(("crm_mon",), 102, "not connected"))
        with anyio.fail_after(5):
            await world.stub.pause(PauseRequest(timeout=5, expiry=60))

            async def read_ahead_done() -> bool:
                return world.crm.reads >= 1

            await eventually(read_ahead_done)
        world.crm.set_state(healthy_state())
        with anyio.fail_after(5):
            response = await world.stub.migrate(Empty())
        assert response.migrating_to == "n2"
        assert world.crm.reads == 2


async def test_a_read_ahead_older_than_the_limit_is_not_used() -> None:
    async with open_world(pgbouncers=1, migrate_read_ahead=timedelta(milliseconds=1)) as world:
        with anyio.fail_after(5):
            await world.stub.pause(PauseRequest(timeout=5, expiry=60))
        await anyio.sleep(0.05)  # older than the 1 ms limit
        # The cluster changed meanwhile: the stale read (n1 primary) must not decide.
        world.crm.set_state(sync_state())
        with anyio.fail_after(5):
            await world.stub.migrate(Empty())
        assert world.crm.reads == 2
        assert world.control.calls == [("prefer", "pgsql-ha", "n2")]
