from __future__ import annotations

import io
import json
import os
import pty
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import anyio
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
    maintenance: bool = False
    down: tuple[str, ...] = ()  # endpoints that refuse set_maintenance
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
            clients = [Supervise("s1:1", self), Supervise("s2:1", self)]
            yield Adapters(self.store, clients, maintenance=clients)

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

    async def set_maintenance(self, *, enabled: bool, reason: str, by: str) -> None:
        if self.endpoint in self.world.down:
            raise ConnectionRefusedError(f"{self.endpoint} is down")
        self.world.calls.append(f"maintenance {enabled} {reason} {by.count('@')}")
        self.world.maintenance = enabled

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
    assert run(world, "--yes", "--json") == 0
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
    assert run(world, "run", "--yes", "--target", "n3") == 0
    out = capsys.readouterr().out
    assert "Switchover succeeded" in out
    assert "new primary:  n3 (10.0.0.13)" in out
    assert world.primary == "n3"


def test_pause_failure_rolls_back_cleanly_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    world = World(refuse_pause=True)
    assert run(world, "--yes", "--json") == 1
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
    assert run(world, "--yes", "--json") == 3
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


# --------------------------------------------------- confirmation on a pseudo-terminal


@dataclass
class Terminal:
    """A pseudo-terminal whose slave side is this process's stdin and stderr."""

    master: int
    slave: int
    stdin: io.TextIOWrapper
    stderr: io.TextIOWrapper
    reader: threading.Thread
    shown: bytearray
    monkeypatch: pytest.MonkeyPatch
    closed: bool = False

    def run(self, world: World, *argv: str) -> int:
        """Run the CLI with this terminal as its stdin and stderr."""
        # Set here, in the test body: pytest's own capture replaces sys.stderr again
        # between fixture set-up and the test call.
        self.monkeypatch.setattr(sys, "stdin", self.stdin)
        self.monkeypatch.setattr(sys, "stderr", self.stderr)
        try:
            return _confirm_run(world, *argv)
        finally:
            self.monkeypatch.undo()

    def type(self, text: str) -> None:
        """Type ``text`` as the operator would (the line discipline buffers it)."""
        os.write(self.master, text.encode())

    def close(self) -> str:
        """Close the slave side; return everything the terminal showed."""
        if not self.closed:
            self.closed = True
            self.stderr.close()
            os.close(self.slave)
            # With every slave descriptor closed the reader sees EIO and stops.
            self.reader.join(timeout=10)
            os.close(self.master)
        return self.shown.decode(errors="replace")


def _drain(master: int, into: bytearray) -> None:
    # Read everything the CLI writes to the terminal, so a long plan never fills the
    # pty's buffer and blocks the writer.
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO once the slave side is closed
            return
        if not chunk:
            return
        into.extend(chunk)


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Iterator[Terminal]:
    """Open a pseudo-terminal (closed after the test)."""
    master, slave = pty.openpty()
    stdin = io.TextIOWrapper(io.FileIO(slave, "r", closefd=False))
    stderr = io.TextIOWrapper(io.FileIO(os.dup(slave), "w"), write_through=True)
    shown = bytearray()
    reader = threading.Thread(target=_drain, args=(master, shown), daemon=True)
    reader.start()
    term = Terminal(master, slave, stdin, stderr, reader, shown, monkeypatch)
    try:
        yield term
    finally:
        term.close()
        stdin.close()


def _confirm_run(world: World, *argv: str) -> int:
    return main([*argv, *FAST, "--log-level", "error"], adapters=world.adapters, clock=world.clock)


@dataclass
class FickleWorld(World):
    """A world whose standbys swap promotion scores once the plan was read."""

    opened: int = 0

    def roles(self) -> tuple[NodeRole, ...]:
        roles = super().roles()
        if self.opened < 2:
            return roles
        swapped = {"n2": 998, "n3": 999}
        return tuple(
            r
            if r.name == self.primary
            else r.model_copy(update={"promotion_score": swapped.get(r.name, r.promotion_score)})
            for r in roles
        )

    def adapters(self, settings: FailoverSettings) -> AbstractAsyncContextManager[Adapters]:
        self.opened += 1
        return super().adapters(settings)


def test_answering_y_on_the_terminal_runs_the_switchover_to_the_planned_node(
    terminal: Terminal, capsys: pytest.CaptureFixture[str]
) -> None:
    world = World()
    terminal.type("y\n")
    assert terminal.run(world) == 0
    assert world.primary == "n2"
    assert "migrate" in world.calls
    assert "Switchover succeeded" in capsys.readouterr().out


def test_the_terminal_shows_the_plan_before_the_question(
    terminal: Terminal,
) -> None:
    world = World()
    terminal.type("y\n")
    assert terminal.run(world, "--json") == 0
    shown = terminal.close()
    assert "Switchover plan:" in shown
    assert "primary now:  n1" in shown
    assert "target:       n2 (the cluster's choice" in shown
    assert "proxies that will be waited for:" in shown
    assert "app1" in shown
    assert shown.index("app1") < shown.index("Move the primary from n1 to n2? [y/N]")


def test_answering_n_changes_nothing_and_exits_1(
    terminal: Terminal,
) -> None:
    world = World()
    terminal.type("n\n")
    assert terminal.run(world) == 1
    assert world.calls == []
    assert world.primary == "n1"
    shown = terminal.close()
    assert "[y/N]" in shown
    assert "not confirmed; nothing was changed" in shown


def test_an_empty_answer_is_no(terminal: Terminal) -> None:
    world = World()
    terminal.type("\n")
    assert terminal.run(world) == 1
    assert world.calls == []
    assert "not confirmed" in terminal.close()


def test_a_plan_that_would_be_refused_is_shown_and_nothing_is_asked(
    terminal: Terminal,
) -> None:
    world = World(constraint=True)
    terminal.type("y\n")  # must not be taken as consent to anything
    assert terminal.run(world) == 1
    assert world.calls == []
    shown = terminal.close()
    assert "would be REFUSED: leftover move constraint" in shown
    assert "[y/N]" not in shown


def test_the_confirmed_target_is_pinned(
    terminal: Terminal, capsys: pytest.CaptureFixture[str]
) -> None:
    world = FickleWorld()
    terminal.type("yes\n")
    # The plan picks n2; by the time the switchover runs n3 has the higher score, and
    # choosing again would move the primary somewhere the operator did not confirm.
    assert terminal.run(world, "run", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["planned_target"] == "n2"
    assert report["target"]["node"] == "n2"
    assert "Move the primary from n1 to n2?" in terminal.close()


def test_yes_on_a_terminal_does_not_ask(
    terminal: Terminal,
) -> None:
    world = World()
    assert terminal.run(world, "--yes") == 0
    assert world.primary == "n2"
    assert "[y/N]" not in terminal.close()


def test_without_a_terminal_and_without_yes_it_refuses_with_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World()
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # not a terminal
    assert _confirm_run(world) == 2
    assert world.calls == []
    err = capsys.readouterr().err
    assert "stdin is not a terminal" in " ".join(err.split())
    assert "--yes" in err


def test_the_real_command_without_a_terminal_refuses_before_connecting() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGCM_")}
    # Unroutable endpoints: the refusal must come before any connection attempt.
    result = subprocess.run(
        [sys.executable, "-m", "pgcm_failover", "--endpoints", "192.0.2.1:1"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "refusing to start a switchover" in result.stderr
    assert result.stdout == ""


def test_an_error_quoting_etcd_is_escaped_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    world = World()
    error = EtcdError("etcdserver: \x1b]0;owned\x07\x1b[2J\u202eno")
    assert main(["cleanup", *FAST], adapters=racing_adapters(world, grant_error=error)) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert "\u202e" not in err
    assert "cleanup failed: etcdserver: \\x1b]0;owned\\x07\\x1b[2J\\u202eno" in err


def test_every_switchover_is_recorded_in_the_history_also_a_failed_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = World(refuse_pause=True)
    assert run(world, "--yes", "--json") == 1
    world.refuse_pause = False
    assert run(world, "--yes", "--json") == 0
    capsys.readouterr()
    assert run(world, "history", "--json") == 0
    newest, failed = json.loads(capsys.readouterr().out)["switchovers"]
    assert (newest["outcome"], newest["old_primary"], newest["target"]) == ("succeeded", "n1", "n2")
    assert newest["paused_s"] == 0.75
    assert newest["by"].endswith(f"@{socket.gethostname()}")
    assert newest["pid"] == os.getpid()
    assert [p["name"] for p in newest["phases"]][-1] == "wait_settled"
    assert failed["outcome"] == "rolled_back"
    assert "exceeded pause timeout" in failed["error"]
    assert failed["started_at"] < newest["started_at"]
    assert run(world, "history", "-n", "1") == 0
    text = capsys.readouterr().out
    assert "n1 -> n2" in text
    assert "rolled_back" not in text


def test_history_keeps_only_history_limit_records(capsys: pytest.CaptureFixture[str]) -> None:
    world = World()
    for _ in range(3):
        assert run(world, "--yes", "--history-limit", "2") == 0
    capsys.readouterr()
    assert run(world, "history", "--json") == 0
    assert len(json.loads(capsys.readouterr().out)["switchovers"]) == 2
    listing = anyio.run(world.store.get_prefix, LAYOUT.history_prefix)
    assert len(listing.items) == 2


# ------------------------------------------------------------------------ maintenance


def test_maintenance_on_is_set_recorded_shown_and_blocks_a_switchover(
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = World(down=("s1:1",))
    assert run(world, "maintenance", "on", "--reason", "kernel update", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert world.maintenance
    assert world.calls == ["maintenance True kernel update 1"]
    assert result["skipped"] == ["s1:1"]
    assert result["maintenance"]["enabled"] is True
    assert result["maintenance"]["reason"] == "kernel update"
    assert result["maintenance"]["endpoint"] == "s2:1"
    assert run(world, "status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["maintenance"]["by"].endswith(socket.gethostname())
    assert run(world, "status") == 0
    assert "maintenance: ON (since" in capsys.readouterr().out
    world.calls.clear()
    assert run(world, "--yes", "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert "maintenance mode" in report["error"]
    assert world.calls == []  # nothing paused, nothing moved
    assert run(world, "--dry-run") == 1
    assert "would be REFUSED: Pacemaker is in maintenance mode" in capsys.readouterr().out
    assert run(world, "maintenance", "off") == 0
    assert "maintenance: off" in capsys.readouterr().out
    assert world.calls[-1].startswith("maintenance False")
    assert run(world, "--yes") == 0
    assert world.primary == "n2"


def test_maintenance_on_without_a_reason_or_with_a_too_long_one_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = World()
    assert run(world, "maintenance", "on") == 2
    assert "needs --reason" in capsys.readouterr().err
    assert run(world, "maintenance", "on", "--reason", "x" * 257) == 2
    assert "longer than 256" in capsys.readouterr().err
    assert world.calls == []


def test_maintenance_fails_with_exit_1_when_no_endpoint_answers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    world = World(down=("s1:1", "s2:1"))
    assert run(world, "maintenance", "on", "--reason", "r") == 1
    err = capsys.readouterr().err
    assert "set_maintenance failed on 2 endpoint(s)" in err
    assert not world.maintenance
    assert anyio.run(world.store.get, LAYOUT.maintenance) is None
