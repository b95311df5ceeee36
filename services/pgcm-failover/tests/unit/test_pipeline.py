from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta

import anyio
import pytest

from pgcm_failover.errors import (
    ClientsFailed,
    ClientUnhealthy,
    FailoverAborted,
    SuperviseRefused,
    SuperviseUnavailable,
)
from pgcm_failover.pipeline import (
    Health,
    MigrationTarget,
    Pipeline,
    PipelineOptions,
    PreflightResult,
)

TARGET = MigrationTarget("n2", "10.250.0.12")
FAST = PipelineOptions(
    health_check_timeout=timedelta(seconds=1),
    lock_timeout=timedelta(seconds=1),
    pause_timeout=timedelta(seconds=1),
    pause_expiry=timedelta(seconds=1),
    resume_timeout=timedelta(seconds=1),
    migrate_timeout=timedelta(seconds=1),
    settle_timeout=timedelta(seconds=1),
    cleanup_grace=timedelta(seconds=1),
)


@dataclass
class FakeClock:
    """A monotonic clock that moves only when a test double says so."""

    now: float = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Journal:
    calls: list[str] = field(default_factory=list)

    def plain(self) -> list[str]:
        """Calls with the endpoint suffix removed, fan-outs collapsed to one entry."""
        collapsed: list[str] = []
        for call in self.calls:
            name = call.split("@")[0]
            if not collapsed or collapsed[-1] != name or "@" not in call:
                collapsed.append(name)
        return collapsed


@dataclass
class RecordingClient:
    name: str
    journal: Journal
    healthy: bool = True
    fail_on: frozenset[str] = frozenset()
    hang_on: frozenset[str] = frozenset()
    clock: FakeClock | None = None
    migrate_error: Exception | None = None
    migrated_with: list[str | None] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return self.name

    stray_cancel_on: frozenset[str] = frozenset()

    async def _act(self, op: str) -> None:
        self.journal.calls.append(f"{op}@{self.name}")
        if op in self.stray_cancel_on:
            # What a transport library does when it cancels its own task.
            raise asyncio.CancelledError
        if op in self.hang_on:
            await anyio.sleep_forever()
        if op in self.fail_on:
            raise RuntimeError(f"{op} refused by {self.name}")

    async def health_check(self) -> Health:
        await self._act("health_check")
        return Health(self.healthy, () if self.healthy else ("pgbouncer down",))

    async def pause(self, *, pause_timeout: timedelta, expiry: timedelta) -> None:
        assert pause_timeout == FAST.pause_timeout
        assert expiry == FAST.pause_expiry
        await self._act("pause")

    async def resume(self) -> None:
        await self._act("resume")

    async def migrate(self, target_node: str | None) -> MigrationTarget:
        self.migrated_with.append(target_node)
        await self._act("migrate")
        if self.clock is not None:
            self.clock.now += 0.25
        if self.migrate_error is not None:
            raise self.migrate_error
        return TARGET

    async def unmigrate(self) -> None:
        await self._act("unmigrate")


@dataclass
class RecordingCoordinator:
    journal: Journal
    acks_hang: bool = False
    proxies: tuple[str, ...] = ("app1", "n1")
    gone: tuple[str, ...] = ()

    async def acquire_lock(self) -> None:
        self.journal.calls.append("acquire_lock")

    async def release_lock(self) -> None:
        self.journal.calls.append("release_lock")

    async def wait_for_primary(self, address: str) -> None:
        assert address == TARGET.address
        self.journal.calls.append("wait_for_primary")

    async def wait_for_proxy_acks(self, address: str) -> Sequence[str]:
        self.journal.calls.append("wait_for_proxy_acks")
        if self.acks_hang:
            await anyio.sleep_forever()
        return list(self.proxies)

    @property
    def pending_proxies(self) -> Sequence[str]:
        return self.proxies[-1:] if self.acks_hang else ()

    @property
    def confirmed_proxies(self) -> Sequence[str]:
        return self.proxies[:-1] if self.acks_hang else self.proxies

    @property
    def gone_proxies(self) -> Sequence[str]:
        return self.gone


@dataclass
class RecordingCluster:
    journal: Journal
    refuse: bool = False

    async def preflight(
        self, target_node: str | None, *, max_transaction_age: timedelta
    ) -> PreflightResult:
        self.journal.calls.append("preflight")
        if self.refuse:
            raise FailoverAborted("transaction older than the pause timeout")
        return PreflightResult("n1", TARGET.node, "highest score", notes=("no pg facts",))

    settle_hang: bool = False
    settle_seconds: float = 0.0  # how long Pacemaker takes to settle (simulated)
    settled: bool = False

    async def wait_settled(self, target_node: str) -> None:
        assert target_node == TARGET.node
        self.journal.calls.append("wait_settled")
        if self.settle_hang:
            await anyio.sleep_forever()
        await anyio.sleep(self.settle_seconds)
        self.settled = True


def make(
    journal: Journal,
    clients: list[RecordingClient],
    *,
    acks_hang: bool = False,
    refuse: bool = False,
    proxies: tuple[str, ...] = ("app1", "n1"),
) -> Pipeline:
    return Pipeline(
        clients,
        RecordingCoordinator(journal, acks_hang=acks_hang, proxies=proxies),
        RecordingCluster(journal, refuse=refuse),
        FAST,
    )


async def test_success_runs_every_step_in_order_and_undoes_lifo() -> None:
    journal = Journal()
    clients = [RecordingClient("s1", journal), RecordingClient("s2", journal)]
    clock = FakeClock()
    clients[0].clock = clock
    pipeline = Pipeline(
        clients, RecordingCoordinator(journal), RecordingCluster(journal), FAST, clock=clock
    )
    report = await pipeline.run()
    assert journal.plain() == [
        "health_check",
        "acquire_lock",
        "preflight",
        "pause",
        "migrate",
        "wait_for_primary",
        "wait_for_proxy_acks",
        "resume",
        "wait_settled",
        "unmigrate",
        "release_lock",
    ]
    assert report.target == TARGET
    assert report.proxies_acknowledged == ["app1", "n1"]
    # The clock moved 0.25 s during the migrate and nowhere else while paused.
    assert report.paused_seconds == 0.25
    assert report.needs_human == []
    assert report.old_primary == "n1"
    assert report.notes == ["no pg facts"]
    assert [p.name for p in report.phases if p.ok] == [
        "health_check",
        "acquire_lock",
        "preflight",
        "pause",
        "migrate",
        "wait_for_proxies",
        "resume",
        "wait_settled",
    ]


async def test_unhealthy_endpoint_changes_nothing() -> None:
    journal = Journal()
    clients = [RecordingClient("s1", journal), RecordingClient("s2", journal, healthy=False)]
    with pytest.raises(ClientUnhealthy, match=r"s2 \(pgbouncer down\)"):
        await make(journal, clients).run()
    assert journal.plain() == ["health_check"]


async def test_a_call_ended_by_a_stray_cancellation_is_never_counted_healthy() -> None:
    journal = Journal()
    clients = [
        RecordingClient("s1", journal),
        RecordingClient("s2", journal, stray_cancel_on=frozenset({"health_check"})),
    ]
    with pytest.raises(ClientsFailed) as caught:
        await make(journal, clients).run()
    assert set(caught.value.failures) == {"s2"}
    assert "without an answer" in str(caught.value)
    assert journal.plain() == ["health_check"]


async def test_pause_failure_still_resumes_every_bouncer_and_keeps_every_error() -> None:
    journal = Journal()
    clients = [
        RecordingClient("s1", journal),
        RecordingClient("s2", journal, fail_on=frozenset({"pause"})),
        RecordingClient("s3", journal, fail_on=frozenset({"pause"})),
    ]
    with pytest.raises(ClientsFailed) as caught:
        await make(journal, clients).run()
    assert set(caught.value.failures) == {"s2", "s3"}
    assert journal.plain() == [
        "health_check",
        "acquire_lock",
        "preflight",
        "pause",
        "resume",
        "release_lock",
    ]
    assert sorted(c for c in journal.calls if c.startswith("resume")) == [
        "resume@s1",
        "resume@s2",
        "resume@s3",
    ]
    assert "migrate" not in journal.plain()


async def test_preflight_refusal_releases_the_lock_without_pausing() -> None:
    journal = Journal()
    with pytest.raises(FailoverAborted):
        await make(journal, [RecordingClient("s1", journal)], refuse=True).run()
    assert journal.plain() == ["health_check", "acquire_lock", "preflight", "release_lock"]


async def test_proxies_not_following_resume_first_then_settle_and_clear() -> None:
    journal = Journal()
    with pytest.raises(TimeoutError, match="wait_for_proxies timed out"):
        await make(journal, [RecordingClient("s1", journal)], acks_hang=True).run()
    assert journal.plain()[-5:] == [
        "wait_for_proxy_acks",
        "resume",
        "wait_settled",
        "unmigrate",
        "release_lock",
    ]


async def test_a_silent_proxy_is_reported_and_clients_resumed_after_proxy_ack_timeout() -> None:
    journal = Journal()
    options = dataclasses.replace(FAST, proxy_ack_timeout=timedelta(milliseconds=50))
    pipeline = Pipeline(
        [RecordingClient("s1", journal)],
        RecordingCoordinator(journal, acks_hang=True),
        RecordingCluster(journal),
        options,
    )
    report = await pipeline.run()
    assert report.proxies_late == ["n1"]
    assert report.proxies_acknowledged == ["app1"]
    assert any("proxy_ack_timeout" in note and "n1" in note for note in report.notes)
    assert journal.plain()[-5:] == [
        "wait_for_proxy_acks",
        "resume",
        "wait_settled",
        "unmigrate",
        "release_lock",
    ]


async def test_a_proxy_whose_ack_vanished_during_the_wait_is_reported_late() -> None:
    journal = Journal()
    coordinator = RecordingCoordinator(journal, proxies=("app1",), gone=("app2",))
    pipeline = Pipeline(
        [RecordingClient("s1", journal)], coordinator, RecordingCluster(journal), FAST
    )
    report = await pipeline.run()
    assert report.proxies_acknowledged == ["app1"]
    assert report.proxies_late == ["app2"]
    assert any("app2" in note and "not waited for" in note for note in report.notes)


async def test_a_failing_undo_does_not_stop_the_others_and_is_reported() -> None:
    journal = Journal()
    clients = [RecordingClient("s1", journal, fail_on=frozenset({"pause", "resume"}))]
    pipeline = make(journal, clients)
    with pytest.raises(ClientsFailed):
        await pipeline.run()
    assert journal.plain()[-1] == "release_lock"
    assert len(pipeline.report.needs_human) == 1
    assert "resume failed" in pipeline.report.needs_human[0]


async def test_cancellation_mid_pause_still_runs_every_undo() -> None:
    journal = Journal()
    clients = [
        RecordingClient("s1", journal),
        RecordingClient("s2", journal, hang_on=frozenset({"pause"})),
    ]
    pipeline = make(journal, clients)
    with anyio.move_on_after(0.2):
        await pipeline.run()
    assert journal.plain()[-2:] == ["resume", "release_lock"]
    assert "resume@s2" in journal.calls


def test_a_pipeline_without_endpoints_is_refused() -> None:
    journal = Journal()
    with pytest.raises(ValueError, match="at least one"):
        make(journal, [])


async def test_no_registered_proxy_is_a_note_not_an_error() -> None:
    journal = Journal()
    report = await make(journal, [RecordingClient("s1", journal)], proxies=()).run()
    assert report.proxies_acknowledged == []
    assert any("no pgcm-proxy is registered" in note for note in report.notes)
    assert report.needs_human == []


async def test_failure_after_the_move_needs_a_human_even_when_undos_succeed() -> None:
    journal = Journal()
    pipeline = make(journal, [RecordingClient("s1", journal)], acks_hang=True)
    with pytest.raises(TimeoutError):
        await pipeline.run()
    assert pipeline.report.error is not None
    assert any("primary may now be on n2" in item for item in pipeline.report.needs_human)


async def test_failure_before_the_move_is_a_clean_rollback() -> None:
    journal = Journal()
    clients = [RecordingClient("s1", journal, fail_on=frozenset({"pause"}))]
    pipeline = make(journal, clients)
    with pytest.raises(ClientsFailed):
        await pipeline.run()
    assert pipeline.report.needs_human == []
    assert pipeline.report.error is not None


def test_phase_listener_sees_start_and_end_of_each_phase() -> None:
    journal = Journal()
    seen: list[tuple[str, bool]] = []
    pipeline = Pipeline(
        [RecordingClient("s1", journal)],
        RecordingCoordinator(journal),
        RecordingCluster(journal),
        FAST,
        on_phase=lambda phase: seen.append((phase.name, phase.finished is not None)),
    )
    anyio.run(pipeline.run)
    assert seen[:4] == [
        ("health_check", False),
        ("health_check", True),
        ("acquire_lock", False),
        ("acquire_lock", True),
    ]


async def test_wait_for_proxies_is_bounded_by_what_is_left_of_the_pause_expiry() -> None:
    journal = Journal()
    clock = FakeClock()
    client = RecordingClient("s1", journal, clock=clock)
    # Expiry 1 s, 0.25 s used by the migrate, 0.5 s margin: 0.25 s are left.
    options = replace(FAST, expiry_margin=timedelta(milliseconds=500))
    pipeline = Pipeline(
        [client],
        RecordingCoordinator(journal, acks_hang=True),
        RecordingCluster(journal),
        options,
        clock=clock,
    )
    with pytest.raises(TimeoutError, match=r"wait_for_proxies timed out after 0\.25s"):
        await pipeline.run()


def refused(endpoint: str) -> SuperviseRefused:
    return SuperviseRefused(endpoint, "migrate", "FAILED_PRECONDITION", "node going away")


def unavailable(endpoint: str) -> SuperviseUnavailable:
    return SuperviseUnavailable(endpoint, "migrate", "UNAVAILABLE", "connection reset")


async def test_migrate_retry_after_an_ambiguous_failure_pins_the_planned_target() -> None:
    journal = Journal()
    first = RecordingClient("s1", journal, migrate_error=unavailable("s1"))
    second = RecordingClient("s2", journal)
    report = await make(journal, [first, second]).run()
    assert first.migrated_with == [None]
    assert second.migrated_with == [TARGET.node]  # pre-flight's plan, not "any node"
    assert report.target == TARGET


async def test_migrate_retry_after_a_definite_refusal_keeps_the_same_target() -> None:
    journal = Journal()
    first = RecordingClient("s1", journal, migrate_error=refused("s1"))
    second = RecordingClient("s2", journal)
    await make(journal, [first, second]).run()
    assert (first.migrated_with, second.migrated_with) == ([None], [None])


async def test_unmigrate_undo_waits_settle_timeout_beyond_cleanup_grace() -> None:
    journal = Journal()
    # Settling takes longer than cleanup_grace, less than settle_timeout.
    cluster = RecordingCluster(journal, settle_seconds=0.3)
    options = replace(
        FAST, cleanup_grace=timedelta(milliseconds=100), settle_timeout=timedelta(seconds=2)
    )
    pipeline = Pipeline(
        [RecordingClient("s1", journal)],
        RecordingCoordinator(journal, acks_hang=True),
        cluster,
        replace(options, expiry_margin=timedelta(milliseconds=800)),
    )
    with pytest.raises(TimeoutError, match="wait_for_proxies"):
        await pipeline.run()
    assert cluster.settled
    assert journal.plain()[-3:] == ["wait_settled", "unmigrate", "release_lock"]
    assert not any("unmigrate" in item for item in pipeline.report.needs_human)


async def test_unmigrate_undo_leaves_the_constraint_when_pacemaker_does_not_settle() -> None:
    journal = Journal()
    options = replace(
        FAST,
        cleanup_grace=timedelta(milliseconds=100),
        settle_timeout=timedelta(milliseconds=200),
        expiry_margin=timedelta(milliseconds=800),
    )
    pipeline = Pipeline(
        [RecordingClient("s1", journal)],
        RecordingCoordinator(journal, acks_hang=True),
        RecordingCluster(journal, settle_hang=True),
        options,
    )
    with pytest.raises(TimeoutError, match="wait_for_proxies"):
        await pipeline.run()
    assert "unmigrate" not in journal.plain()
    assert journal.plain()[-2:] == ["wait_settled", "release_lock"]
    assert any(
        "move constraint was left in place" in item and "pgcm-failover cleanup" in item
        for item in pipeline.report.needs_human
    )


async def test_unmigrate_undo_leaves_the_constraint_when_the_target_is_unknown() -> None:
    journal = Journal()
    clients = [RecordingClient("s1", journal, migrate_error=unavailable("s1"))]
    pipeline = Pipeline(
        clients,
        RecordingCoordinator(journal),
        RecordingCluster(journal),
        replace(FAST, target_node=None),
    )
    # pre-flight plans TARGET.node, but no retry endpoint is left: the answer is lost.
    with pytest.raises(ClientsFailed):
        await pipeline.run()
    assert "unmigrate" not in journal.plain()
    assert any("target is unknown" in item for item in pipeline.report.needs_human)


async def test_every_endpoint_refusing_the_migrate_leaves_nothing_to_clear() -> None:
    journal = Journal()
    clients = [RecordingClient("s1", journal, migrate_error=refused("s1"))]
    pipeline = make(journal, clients)
    with pytest.raises(ClientsFailed):
        await pipeline.run()
    assert "unmigrate" not in journal.plain()
    assert pipeline.report.needs_human == []
