from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from pgcm_common.errors import EtcdError
from pgcm_common.etcd import KeyValue, Lease
from pgcm_common.records import KeyLayout, NodeRole, NodeStatus, ProxyAck, now_utc
from pgcm_failover.app import Adapters
from pgcm_failover.cli import main
from pgcm_failover.pipeline import Health, MigrationTarget
from pgcm_failover.settings import FailoverSettings
from pgcm_testkit.fakes.etcd import FakeEtcdStore

LAYOUT = KeyLayout("/pg", "/master")
ADDRESSES = {"n1": "10.0.0.11", "n2": "10.0.0.12", "n3": "10.0.0.13"}
FAST = ["--cluster-namespace", "/pg", "--pause-expiry", "2s", "--pause-timeout", "500ms"]
FAST += ["--settle-timeout", "2s", "--lock-timeout", "1s", "--cleanup-grace", "1s"]
FAST += ["--endpoints", "s1:1,s2:1", "--poll-interval", "10ms"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("PGCM_"):
            monkeypatch.delenv(name)


@dataclass
class World:
    """etcd plus supervise doubles that publish what the real services would."""

    store: FakeEtcdStore = field(default_factory=FakeEtcdStore)
    primary: str = "n1"
    calls: list[str] = field(default_factory=list)
    refuse_pause: bool = False
    fail_unmigrate: bool = False
    constraint: bool = False
    proxies: tuple[str, ...] = ("app1",)
    now: float = 1000.0  # the switchover's monotonic clock; moves only when the world acts

    def clock(self) -> float:
        return self.now

    def roles(self) -> tuple[NodeRole, ...]:
        return tuple(
            NodeRole(
                name=n,
                online=True,
                role="Promoted" if n == self.primary else "Unpromoted",
                promotion_score=1001 if n == self.primary else 1000 - i,
            )
            for i, n in enumerate(ADDRESSES)
        )

    async def publish(self) -> None:
        for node, address in ADDRESSES.items():
            record = NodeStatus(
                node=node,
                address=address,
                observed_at=now_utc(),
                with_quorum=True,
                dc="n1",
                primary=self.primary,
                nodes=self.roles(),
                move_constraints=("cli-prefer-pgsql-ha",) if self.constraint else (),
                pgbouncer_paused=False,
            )
            await self.store.put(LAYOUT.node_status(node), record.to_json())
        revision = await self.store.put(LAYOUT.master, ADDRESSES[self.primary].encode())
        for proxy in self.proxies:
            ack = ProxyAck(
                proxy_id=proxy,
                host=ADDRESSES[self.primary],
                revision=revision,
                applied_at=now_utc(),
            )
            await self.store.put(LAYOUT.proxy_ack(proxy), ack.to_json())

    def adapters(self, _settings: FailoverSettings) -> AbstractAsyncContextManager[Adapters]:
        @asynccontextmanager
        async def opened() -> AsyncIterator[Adapters]:
            await self.publish()
            yield Adapters(self.store, [Supervise("s1:1", self), Supervise("s2:1", self)])

        return opened()


@dataclass
class Supervise:
    endpoint: str
    world: World

    async def health_check(self) -> Health:
        return Health(healthy=True)

    async def pause(self, *, pause_timeout: timedelta, expiry: timedelta) -> None:
        self.world.calls.append("pause")
        if self.world.refuse_pause:
            raise TimeoutError("exceeded pause timeout")

    async def resume(self) -> None:
        self.world.calls.append("resume")

    async def migrate(self, target_node: str | None) -> MigrationTarget:
        self.world.calls.append("migrate")
        self.world.now += 0.75  # Pacemaker takes this long to move the primary
        self.world.primary = target_node or "n2"
        self.world.constraint = True
        await self.world.publish()
        return MigrationTarget(self.world.primary, ADDRESSES[self.world.primary])

    async def unmigrate(self) -> None:
        self.world.calls.append("unmigrate")
        if self.world.fail_unmigrate:
            raise RuntimeError("crm_resource failed")
        self.world.constraint = False
        await self.world.publish()


def run(world: World, *argv: str) -> int:
    return main([*argv, *FAST], adapters=world.adapters, clock=world.clock)


def test_help_describes_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for text in ("show-config", "--config-file", "status", "cleanup", "--pause-expiry"):
        assert text in out
    assert "--failover-api-endpoints" in out
    assert "--dry-run" in out
    assert "--target" in out


def test_successful_switchover_exits_0_with_a_json_report(
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = World()
    assert run(world, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outcome"] == "succeeded"
    assert report["old_primary"] == "n1"
    assert report["target"] == {"node": "n2", "address": "10.0.0.12"}
    assert report["proxies_acknowledged"] == ["app1"]
    assert report["paused_seconds"] == 0.75  # paused exactly while the primary moved
    assert [p["name"] for p in report["phases"]][-1] == "wait_settled"
    assert world.calls[-1] == "unmigrate"
    assert not world.constraint


def test_named_target_and_table_report(capsys: pytest.CaptureFixture[str]) -> None:
    world = World()
    assert run(world, "run", "--target", "n3") == 0
    out = capsys.readouterr().out
    assert "Switchover succeeded" in out
    assert "new primary:  n3 (10.0.0.13)" in out
    assert world.primary == "n3"


def test_pause_failure_rolls_back_cleanly_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    world = World(refuse_pause=True)
    assert run(world, "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["outcome"] == "rolled_back"
    assert "exceeded pause timeout" in report["error"]
    assert "migrate" not in world.calls
    assert world.calls.count("resume") == 2
    assert world.primary == "n1"


def test_a_failed_undo_exits_3_and_says_what_needs_a_human(
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = World(fail_unmigrate=True)
    assert run(world, "--json") == 3
    report = json.loads(capsys.readouterr().out)
    assert report["outcome"] == "needs_human"
    assert any("unmigrate failed" in item for item in report["needs_human"])


def test_dry_run_prints_the_plan_and_changes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    world = World()
    assert run(world, "--dry-run", "--json") == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["would_proceed"] is True
    assert (plan["old_primary"], plan["target"]) == ("n1", "n2")
    assert [p["proxy_id"] for p in plan["proxies"]] == ["app1"]
    assert world.calls == []
    assert world.primary == "n1"
    assert run(world, "--dry-run") == 0
    assert "Dry run: nothing will be changed." in capsys.readouterr().out


def test_dry_run_with_a_leftover_constraint_would_refuse(
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = World(constraint=True)
    assert run(world, "--dry-run") == 1
    assert "would be REFUSED: leftover move constraint" in capsys.readouterr().out


def test_status_shows_nodes_primary_proxies_and_lock(capsys: pytest.CaptureFixture[str]) -> None:
    world = World(constraint=True)
    assert run(world, "status", "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert [n["name"] for n in status["nodes"]] == ["n1", "n2", "n3"]
    assert status["etcd_primary"]["address"] == "10.0.0.11"
    assert status["proxies"][0]["routes_to_primary"] is True
    assert status["pgbouncer_paused"] == {"n1": False, "n2": False, "n3": False}
    assert status["lock"] is None
    assert status["move_constraints"] == ["cli-prefer-pgsql-ha"]
    assert run(world, "status") == 0
    assert "lock: free" in capsys.readouterr().out


def test_cleanup_resumes_and_clears_a_settled_constraint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = World(constraint=True)
    assert run(world, "cleanup", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert world.calls == ["resume", "resume", "unmigrate"]
    assert any("cleared move constraint" in item for item in result["done"])
    assert result["needs_human"] == []


def test_cleanup_refuses_while_a_live_holder_has_the_lock(
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = World()

    @asynccontextmanager
    async def locked(settings: FailoverSettings) -> AsyncIterator[Adapters]:
        async with world.adapters(settings) as adapters:
            lease = await world.store.grant_lease(timedelta(seconds=30))
            await world.store.put(LAYOUT.lock, b'{"holder": "x"}', lease=lease.id)
            yield adapters

    assert main(["cleanup", *FAST], adapters=locked) == 1
    assert "cleanup refused" in capsys.readouterr().err
    assert world.calls == []


class LockRaceStore:
    """A FakeEtcdStore whose first read of the lock key misses a holder that is there.

    It stands for a switchover taking the lock just after cleanup looked.
    """

    def __init__(self, inner: FakeEtcdStore, *, grant_error: EtcdError | None = None) -> None:
        self._inner = inner
        self._hidden = True
        self._grant_error = grant_error

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def get(self, key: bytes) -> KeyValue | None:
        if key == LAYOUT.lock and self._hidden:
            self._hidden = False
            return None
        return await self._inner.get(key)

    async def grant_lease(self, ttl: timedelta) -> Lease:
        if self._grant_error is not None:
            raise self._grant_error
        return await self._inner.grant_lease(ttl)


def racing_adapters(
    world: World, *, grant_error: EtcdError | None = None
) -> Callable[[FailoverSettings], AbstractAsyncContextManager[Adapters]]:
    @asynccontextmanager
    async def opened(settings: FailoverSettings) -> AsyncIterator[Adapters]:
        async with world.adapters(settings) as adapters:
            lease = await world.store.grant_lease(timedelta(seconds=30))
            await world.store.put(LAYOUT.lock, b'{"holder": "x"}', lease=lease.id)
            store = LockRaceStore(world.store, grant_error=grant_error)
            # LockRaceStore delegates the rest of EtcdStore through __getattr__, which
            # mypy does not count towards a Protocol.
            yield Adapters(store, adapters.clients)  # type: ignore[arg-type]

    return opened


def test_cleanup_without_the_lock_in_time_exits_1_with_a_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = World()
    assert main(["cleanup", *FAST], adapters=racing_adapters(world)) == 1
    captured = capsys.readouterr()
    assert "cleanup refused: could not take the failover lock within lock_timeout=1s" in (
        captured.err
    )
    assert "Traceback" not in captured.err + captured.out
    assert world.calls == []


def test_an_etcd_error_inside_the_lock_block_exits_1_with_a_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = World()
    error = EtcdError("etcdserver: permission denied")
    assert main(["cleanup", *FAST], adapters=racing_adapters(world, grant_error=error)) == 1
    captured = capsys.readouterr()
    assert "cleanup failed: etcdserver: permission denied" in captured.err
    assert "Traceback" not in captured.err + captured.out


def test_python_dash_m_runs_the_cli() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGCM_")}
    result = subprocess.run(
        [sys.executable, "-m", "pgcm_failover", "show-config"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "[failover]" in result.stdout


def test_version_prints_the_installed_distribution_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from importlib.metadata import version  # noqa: PLC0415

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"pgcm-failover {version('pgcm-failover')}\n"
