from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import anyio
import pytest

from pgcm_failover.errors import ClientsFailed, ClientUnhealthy, FailoverAborted
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

    @property
    def endpoint(self) -> str:
        return self.name

    async def _act(self, op: str) -> None:
        self.journal.calls.append(f"{op}@{self.name}")
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
        await self._act("migrate")
        return TARGET

    async def unmigrate(self) -> None:
        await self._act("unmigrate")


@dataclass
class RecordingCoordinator:
    journal: Journal
    acks_hang: bool = False
    proxies: tuple[str, ...] = ("app1", "n1")

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

    async def wait_settled(self, target_node: str) -> None:
        assert target_node == TARGET.node
        self.journal.calls.append("wait_settled")


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
    report = await make(journal, clients).run()
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
    assert report.paused_seconds is not None
    assert report.paused_seconds >= 0
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
