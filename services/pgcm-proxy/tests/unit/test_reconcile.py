from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import final

import anyio
import anyio.lowlevel
import prometheus_client  # noqa: F401 - loaded here: a first import inside the event loop reads files
import pytest
import structlog

from pgcm_common.backoff import Backoff
from pgcm_common.etcd import Deleted, KeyValue
from pgcm_common.pgbouncer import (
    DatabaseRow,
    PgBouncerCommandRefused,
    PgBouncerEndpoint,
    PgBouncerState,
    PgBouncerVersion,
    PoolRow,
)
from pgcm_common.records import ProxyAck, now_utc
from pgcm_proxy.ack import AckPublisher
from pgcm_proxy.address import parse_primary_address
from pgcm_proxy.errors import PgBouncersFailed
from pgcm_proxy.metrics import ProxyMetrics
from pgcm_proxy.reconcile import (
    Accepted,
    DesiredState,
    Reconciler,
    Rejected,
    Stale,
    Target,
    offer_and_log,
    sync_config,
)
from pgcm_proxy.template import ConfigTemplate
from pgcm_proxy.writer import ConfigFile
from pgcm_testkit.eventually import eventually
from pgcm_testkit.fakes.etcd import FakeEtcdStore
from pgcm_testkit.fakes.pgbouncer import FakePgBouncerAdmin, fake_database

KEY = b"/ns/master"
ACK_KEY = b"/ns/proxies/p1"
TEMPLATE = ConfigTemplate.parse(
    "[databases]\napp = host={{.Host}} port=5432\nstatic = host=10.9.9.9\n[pgbouncer]\n"
)
_ROUTE = re.compile(r"^(\w+) = host=(\S+)", re.MULTILINE)


def kv(value: bytes, revision: int) -> KeyValue:
    return KeyValue(KEY, value, 1, revision, revision)


class FileBackedBouncer:
    """A fake PgBouncer whose RELOAD re-reads the ini, as the real one does."""

    def __init__(self, ini: Path, initial_host: str = "10.0.0.1") -> None:
        self.ini = ini
        self.fake = FakePgBouncerAdmin([fake_database("app", initial_host)])

    @property
    def endpoint(self) -> PgBouncerEndpoint:
        return self.fake.endpoint

    async def reload(self) -> None:
        await self.fake.reload()
        text = await anyio.Path(self.ini).read_text()
        for name, host in _ROUTE.findall(text):
            self.fake.databases[name] = fake_database(name, host)

    async def show_databases(self) -> tuple[DatabaseRow, ...]:
        return await self.fake.show_databases()

    async def pause(self) -> None:
        await self.fake.pause()

    async def resume(self) -> None:
        await self.fake.resume()

    async def disable(self, database: str) -> None:
        await self.fake.disable(database)

    async def enable(self, database: str) -> None:
        await self.fake.enable(database)

    async def show_pools(self) -> tuple[PoolRow, ...]:
        return await self.fake.show_pools()

    async def show_setting(self, key: str) -> str:
        return await self.fake.show_setting(key)

    async def set_number(self, key: str, value: str) -> None:
        await self.fake.set_number(key, value)

    async def show_state(self) -> PgBouncerState:
        return await self.fake.show_state()

    async def show_version(self) -> PgBouncerVersion:
        return await self.fake.show_version()


@pytest.fixture
def ini(tmp_path: Path) -> Path:
    path = tmp_path / "pgbouncer.ini"
    path.write_text(TEMPLATE.render(parse_primary_address(b"10.0.0.1")))
    return path


@final
class FlakyDisk:
    """A ConfigFile whose fsync fails while ``broken``; counts the syncs that worked."""

    def __init__(self, real: ConfigFile) -> None:
        self.real = real
        self.broken = True
        self.syncs = 0

    @property
    def path(self) -> Path:
        return self.real.path

    async def replace_if_changed(self, content: str) -> bool:
        return await self.real.replace_if_changed(content)

    async def sync_to_disk(self) -> None:
        if self.broken:
            raise OSError(5, "Input/output error")
        await self.real.sync_to_disk()
        self.syncs += 1


def make_reconciler(ini: Path, bouncer: FileBackedBouncer, store: FakeEtcdStore) -> Reconciler:
    return Reconciler(
        proxy_id="p1",
        template=TEMPLATE,
        config=ConfigFile(ini),
        admins=[bouncer],
        acks=AckPublisher(store, ACK_KEY, timedelta(seconds=5)),
        metrics=ProxyMetrics(),
    )


async def read_ack(store: FakeEtcdStore) -> ProxyAck | None:
    found = await store.get(ACK_KEY)
    return None if found is None else ProxyAck.from_json(ACK_KEY, found.value)


def target(host: bytes, revision: int) -> Target:
    return Target(parse_primary_address(host), revision)


def test_desired_state_admits_each_revision_once_in_order() -> None:
    state = DesiredState()
    outcomes = [state.offer(kv(b"10.0.0.2", r)) for r in (5, 5, 4, 6)]
    assert [type(o) for o in outcomes] == [Accepted, Stale, Stale, Accepted]
    assert state.target == target(b"10.0.0.2", 6)
    assert state.generation == 2


async def test_work_for_a_generation_is_cancelled_once_a_newer_one_arrives() -> None:
    state = DesiredState()
    state.offer(kv(b"10.0.0.2", 2))
    reached_the_end = False
    with anyio.fail_after(2), state.cancelled_when_beyond(state.generation) as attempt:
        state.offer(kv(b"10.0.0.3", 3))
        await anyio.sleep(1)
        reached_the_end = True
    assert attempt.cancelled_caught
    assert not reached_the_end


async def test_work_for_an_already_outdated_generation_does_not_start() -> None:
    state = DesiredState()
    state.offer(kv(b"10.0.0.2", 2))
    outdated = state.generation
    state.request_verify()
    with anyio.fail_after(2), state.cancelled_when_beyond(outdated) as attempt:
        await anyio.sleep(1)
    assert attempt.cancelled_caught


async def test_work_that_finished_is_not_cancelled_by_later_generations() -> None:
    state = DesiredState()
    state.offer(kv(b"10.0.0.2", 2))
    with state.cancelled_when_beyond(state.generation) as attempt:
        await anyio.lowlevel.checkpoint()
    state.offer(kv(b"10.0.0.3", 3))
    assert not attempt.cancel_called


def test_deleted_key_and_hostile_value_are_refused_and_the_target_kept() -> None:
    state = DesiredState()
    state.offer(kv(b"10.0.0.2", 2))
    assert state.offer(Deleted(KEY, 3)) == Rejected(3, "deleted", None)
    assert state.offer(kv(b"10.0.0.3\nadmin_users=x", 4)) == Rejected(
        4, "whitespace_or_control", b"10.0.0.3\nadmin_users=x"
    )
    assert state.target == target(b"10.0.0.2", 2)
    assert state.generation == 1


def test_rejections_are_logged_and_counted_by_reason() -> None:
    state, metrics = DesiredState(), ProxyMetrics()
    with structlog.testing.capture_logs() as logs:
        offer_and_log(state, Deleted(KEY, 3), metrics, "watch")
    assert [e["event"] for e in logs] == ["proxy.primary.rejected"]
    assert logs[0]["reason"] == "deleted"
    value = metrics.registry.get_sample_value(
        "pgcm_proxy_rejected_values_total", {"reason": "deleted"}
    )
    assert value == 1.0


def test_the_target_revision_follows_accepted_values_only() -> None:
    state, metrics = DesiredState(), ProxyMetrics()
    offer_and_log(state, kv(b"10.0.0.2", 7), metrics, "watch")
    offer_and_log(state, Deleted(KEY, 8), metrics, "watch")
    offer_and_log(state, kv(b"10.0.0.3 ; evil", 9), metrics, "watch")
    assert metrics.registry.get_sample_value("pgcm_proxy_target_revision") == 7
    offer_and_log(state, kv(b"10.0.0.3", 10), metrics, "poll")
    assert metrics.registry.get_sample_value("pgcm_proxy_target_revision") == 10


async def test_change_rewrites_reloads_confirms_and_acknowledges(ini: Path) -> None:
    store, bouncer = FakeEtcdStore(), FileBackedBouncer(ini)
    await make_reconciler(ini, bouncer, store).apply(target(b"10.0.0.2", 7))
    assert "app = host=10.0.0.2 port=5432" in ini.read_text()
    # SHOW POOLS after the ack: no client waits for a server, so nothing more.
    assert bouncer.fake.commands == ["RELOAD", "SHOW DATABASES", "SHOW POOLS"]
    ack = await read_ack(store)
    assert ack is not None
    assert (ack.proxy_id, ack.host, ack.revision) == ("p1", "10.0.0.2", 7)


async def test_on_routed_runs_once_pgbouncer_routes_there_before_the_ack(ini: Path) -> None:
    bouncer = FileBackedBouncer(ini)
    events: list[str] = []

    class RecordingAcks:
        async def publish(self, ack: ProxyAck) -> None:
            events.append(f"ack {ack.host}")

    def on_routed(host: str) -> None:
        events.append(f"routed {host} after {' + '.join(bouncer.fake.commands)}")

    reconciler = Reconciler(
        proxy_id="p1",
        template=TEMPLATE,
        config=ConfigFile(ini),
        admins=[bouncer],
        acks=RecordingAcks(),
        metrics=ProxyMetrics(),
        on_routed=on_routed,
    )
    await reconciler.apply(target(b"10.0.0.2", 7))
    assert events == ["routed 10.0.0.2 after RELOAD + SHOW DATABASES", "ack 10.0.0.2"]


async def test_clients_held_back_by_a_failed_login_are_connected_after_the_reload(
    ini: Path,
) -> None:
    """Waiting clients and no server: the login retry wait is 0 for one round trip."""
    store, bouncer = FakeEtcdStore(), FileBackedBouncer(ini)
    bouncer.fake.waiting["app"] = 2
    bouncer.fake.settings["server_login_retry"] = "15"
    with structlog.testing.capture_logs() as logs:
        await make_reconciler(ini, bouncer, store).apply(target(b"10.0.0.2", 7))
    assert bouncer.fake.commands == [
        "RELOAD",
        "SHOW DATABASES",
        "SHOW POOLS",
        "SHOW CONFIG",
        "SET server_login_retry = 0",
        "SHOW POOLS",
        "SET server_login_retry = 15",
    ]
    assert bouncer.fake.settings["server_login_retry"] == "15"
    [ended] = [e for e in logs if e["event"] == "pgbouncer.login_backoff.ended"]
    assert (ended["host"], ended["pools"], ended["waiting"]) == ("10.0.0.2", ["app/postgres"], 2)
    ack = await read_ack(store)
    assert ack is not None
    assert ack.host == "10.0.0.2"


async def test_without_a_reload_the_login_retry_wait_is_left_alone(ini: Path) -> None:
    store, bouncer = FakeEtcdStore(), FileBackedBouncer(ini)
    bouncer.fake.waiting["app"] = 2
    await make_reconciler(ini, bouncer, store).apply(target(b"10.0.0.1", 3))
    assert bouncer.fake.commands == ["SHOW DATABASES"]


@final
class RefusingSet(FileBackedBouncer):
    """A PgBouncer whose console refuses SET."""

    async def set_number(self, key: str, value: str) -> None:
        raise PgBouncerCommandRefused(f"SET {key}", "08P01", "refused (fake)")


async def test_a_failed_login_backoff_end_is_logged_and_the_apply_still_succeeds(
    ini: Path,
) -> None:
    store, bouncer = FakeEtcdStore(), RefusingSet(ini)
    bouncer.fake.waiting["app"] = 1
    with structlog.testing.capture_logs() as logs:
        await make_reconciler(ini, bouncer, store).apply(target(b"10.0.0.2", 7))
    assert [e["error_type"] for e in logs if e["event"] == "pgbouncer.login_backoff.failed"] == [
        "PgBouncerCommandRefused"
    ]
    ack = await read_ack(store)
    assert ack is not None
    assert ack.host == "10.0.0.2"


async def test_a_new_address_is_logged_once_its_file_is_written_and_once_per_revision(
    ini: Path,
) -> None:
    state, metrics = DesiredState(), ProxyMetrics()
    reconciler = make_reconciler(ini, FileBackedBouncer(ini), FakeEtcdStore())
    with structlog.testing.capture_logs() as logs:
        offer_and_log(state, kv(b"10.0.0.2", 7), metrics, "poll")
        assert logs == []  # not on the way from the etcd event to the write
        accepted = state.target
        assert accepted is not None
        await reconciler.apply(accepted)
        await reconciler.apply(accepted)  # a verification: nothing new to announce
        await reconciler.apply(target(b"10.0.0.2", 8))  # same host, newer revision
    changes = [e for e in logs if e["event"] == "proxy.primary.change"]
    assert [(e["host"], e["revision"], e["source"]) for e in changes] == [
        ("10.0.0.2", 7, "poll"),
        ("10.0.0.2", 8, "watch"),
    ]
    events = [e["event"] for e in logs]
    assert events.index("proxy.primary.change") < events.index("pgbouncer.config.write")


async def test_unchanged_file_with_agreeing_pgbouncer_sends_no_reload(ini: Path) -> None:
    store, bouncer = FakeEtcdStore(), FileBackedBouncer(ini)
    before = ini.read_bytes()
    await make_reconciler(ini, bouncer, store).apply(target(b"10.0.0.1", 3))
    assert bouncer.fake.commands == ["SHOW DATABASES"]
    assert ini.read_bytes() == before
    assert await read_ack(store) is not None


async def test_unchanged_file_but_stale_pgbouncer_is_reloaded(ini: Path) -> None:
    store, bouncer = FakeEtcdStore(), FileBackedBouncer(ini, initial_host="10.0.0.9")
    await make_reconciler(ini, bouncer, store).apply(target(b"10.0.0.1", 3))
    assert bouncer.fake.commands == ["SHOW DATABASES", "RELOAD", "SHOW DATABASES", "SHOW POOLS"]


async def test_routing_not_confirmed_after_reload_fails_without_ack(ini: Path) -> None:
    store = FakeEtcdStore()
    bouncer = FakePgBouncerAdmin([fake_database("app", "10.0.0.1")])  # RELOAD changes nothing
    reconciler = Reconciler(
        proxy_id="p1",
        template=TEMPLATE,
        config=ConfigFile(ini),
        admins=[bouncer],
        acks=AckPublisher(store, ACK_KEY, timedelta(seconds=5)),
        metrics=ProxyMetrics(),
    )
    with pytest.raises(PgBouncersFailed, match=r"does not route to 10\.0\.0\.2"):
        await reconciler.apply(target(b"10.0.0.2", 4))
    assert await read_ack(store) is None


async def test_sync_retries_with_backoff_and_newest_target_wins(ini: Path) -> None:
    store, bouncer = FakeEtcdStore(), FileBackedBouncer(ini)
    bouncer.fake.reachable = False
    state, metrics = DesiredState(), ProxyMetrics()
    ready: list[bool] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: sync_config(
                state,
                make_reconciler(ini, bouncer, store),
                metrics,
                backoff=Backoff(timedelta(milliseconds=5), timedelta(milliseconds=20)),
                apply_timeout_s=5,
                on_success=lambda: ready.append(True),
            )
        )
        with structlog.testing.capture_logs() as logs:
            state.offer(kv(b"10.0.0.2", 2))

            async def retried() -> bool:
                return sum(1 for e in logs if e["event"] == "operation.retry") >= 2

            with anyio.fail_after(5):
                await eventually(retried, interval_s=0.001)
            state.offer(kv(b"10.0.0.3", 3))
            bouncer.fake.reachable = True

            async def acked_and_ready() -> bool:
                # The ack is written inside apply; readiness is signalled just after it.
                ack = await read_ack(store)
                return ack is not None and ack.revision == 3 and bool(ready)

            with anyio.fail_after(5):
                await eventually(acked_and_ready, interval_s=0.001)
        tg.cancel_scope.cancel()
    assert "app = host=10.0.0.3 " in ini.read_text()
    assert ready == [True]
    errors = metrics.registry.get_sample_value(
        "pgcm_proxy_apply_errors_total", {"error": "PgBouncersFailed"}
    )
    assert errors is not None
    assert errors >= 2
    retry = next(e for e in logs if e["event"] == "operation.retry")
    assert retry["retry_in"] <= 0.02


async def test_ack_lease_lost_is_regranted_and_revoke_deletes_the_key() -> None:
    store = FakeEtcdStore()
    acks = AckPublisher(store, ACK_KEY, timedelta(seconds=3))
    ack = ProxyAck(proxy_id="p1", host="10.0.0.2", revision=2, applied_at=now_utc())
    await acks.publish(ack)
    first = await store.get(ACK_KEY)
    assert first is not None
    store.expire_lease(first.lease)
    assert await store.get(ACK_KEY) is None
    await acks._refresh()
    again = await store.get(ACK_KEY)
    assert again is not None
    assert again.lease != first.lease
    await acks.revoke()
    assert await store.get(ACK_KEY) is None


async def test_failed_fsync_blocks_the_ack_and_the_next_apply_flushes_again(ini: Path) -> None:
    store = FakeEtcdStore()
    bouncer = FileBackedBouncer(ini)
    config = FlakyDisk(ConfigFile(ini))

    reconciler = Reconciler(
        proxy_id="p1",
        template=TEMPLATE,
        config=config,
        admins=[bouncer],
        acks=AckPublisher(store, ACK_KEY, timedelta(seconds=5)),
        metrics=ProxyMetrics(),
    )
    with anyio.fail_after(5), pytest.raises(OSError, match="Input/output"):
        await reconciler.apply(target(b"10.0.0.2", 7))
    assert "host=10.0.0.2" in ini.read_text()  # renamed into place before the fsync
    assert await read_ack(store) is None
    config.broken = False
    with anyio.fail_after(5):
        await reconciler.apply(target(b"10.0.0.2", 7))  # content unchanged, still unsynced
    assert config.syncs == 1
    ack = await read_ack(store)
    assert ack is not None
    assert (ack.host, ack.revision) == ("10.0.0.2", 7)
