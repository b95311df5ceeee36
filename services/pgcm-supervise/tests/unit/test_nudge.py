from __future__ import annotations

import grp
import os
import socket
import stat
from datetime import timedelta
from functools import partial
from pathlib import Path

import anyio
import prometheus_client  # noqa: F401 - first import outside the loop (blockbuster): metrics load it lazily
import pytest

from pgcm_common.records import KeyLayout
from pgcm_supervise.metrics import SuperviseMetrics
from pgcm_supervise.nudge import NudgeSocketError, Wakeup, promoted_node, serve_nudges
from pgcm_supervise.publisher import PrimaryPublisher, serve_publisher
from pgcm_testkit.eventually import eventually
from pgcm_testkit.fakes.etcd import FakeEtcdStore
from pgcm_testkit.fakes.pacemaker import FakeCrmMonReader, state_from_file

ROOT = Path(__file__).parents[4]
AGENT = ROOT / "deploy" / "pacemaker" / "pgcm-alert-agent"
FIXTURES = ROOT / "libs" / "pgcm-common" / "tests" / "fixtures" / "pacemaker"


async def run_agent(socket: Path, **env: str) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRM_alert_")}
    result = await anyio.run_process(
        [str(AGENT)],
        env={**base, "CRM_alert_recipient": str(socket), **env},
        check=False,
    )
    assert result.returncode == 0, result.stderr


def promote_env(resource: str = "pgsqld", task: str = "promote") -> dict[str, str]:
    return {
        "CRM_alert_kind": "resource",
        "CRM_alert_task": task,
        "CRM_alert_rsc": resource,
        "CRM_alert_node": "n2",
        "CRM_alert_rc": "0",
    }


async def test_wakeup_coalesces_nudges_and_times_out_without_one() -> None:
    wakeup = Wakeup()
    wakeup.set()
    wakeup.set()
    with anyio.fail_after(5):
        assert await wakeup.wait(60)
    assert not await wakeup.wait(0)


async def test_alert_agent_nudges_only_for_role_changes_of_the_resource(tmp_path: Path) -> None:
    path = tmp_path / "supervise.sock"
    wakeup = Wakeup()
    metrics = SuperviseMetrics()
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            await tg.start(partial(serve_nudges, path, wakeup, metrics=metrics))
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == 0o660
            await run_agent(path, **promote_env(task="monitor"))
            await run_agent(path, **{**promote_env(), "CRM_alert_kind": "node"})
            await run_agent(path, **promote_env(resource="other"), pgcm_resources="pgsqld")
            await run_agent(path, **promote_env(resource="pgsqld:1"), pgcm_resources="pgsqld")

            async def nudged() -> bool:
                return wakeup.count >= 1

            await eventually(nudged)
        # Datagrams arrive in order: had an ignored event been sent, it would count too.
        assert wakeup.count == 1
        assert metrics.registry is not None
        assert metrics.registry.get_sample_value("pgcm_supervise_nudges_total") == 1
        tg.cancel_scope.cancel()
    assert not path.exists()


async def test_a_promote_alert_is_reported_as_a_promotion(tmp_path: Path) -> None:
    path = tmp_path / "supervise.sock"
    wakeup = Wakeup()
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            await tg.start(partial(serve_nudges, path, wakeup))
            await run_agent(path, **promote_env(task="demote"))

            async def nudged(count: int) -> bool:
                return wakeup.count >= count

            await eventually(partial(nudged, 1))
            assert not wakeup.take_promotion()
            assert wakeup.take_promoted() is None
            await run_agent(path, **promote_env(task="promote"))
            await eventually(partial(nudged, 2))
            assert wakeup.take_promotion()
            assert not wakeup.take_promotion()  # taken once
            # The agent's real datagram names the promoted node.
            assert await wakeup.wait_promoted() == "n2"
        tg.cancel_scope.cancel()


async def test_alert_agent_without_listener_exits_0(tmp_path: Path) -> None:
    with anyio.fail_after(10):
        await run_agent(tmp_path / "nobody.sock", **promote_env())


async def test_alert_agent_with_a_stale_socket_file_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    # A socket file nobody is bound to any more: what a killed supervise leaves behind.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as bound:
        bound.bind(str(path))
    assert stat.S_ISSOCK(path.stat().st_mode)
    with anyio.fail_after(10):
        await run_agent(path, **promote_env())


async def test_alert_agent_sends_one_printable_line(tmp_path: Path) -> None:
    path = tmp_path / "supervise.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        with anyio.fail_after(10):
            await run_agent(path, **{**promote_env(), "CRM_alert_node": "n2\nevil=1\x1b"})
        listener.settimeout(0)  # non-blocking: the agent has exited: the datagram is queued
        datagram = listener.recv(1024).decode()
    assert "task=promote rsc=pgsqld node=n2evil=1 rc=0" in datagram
    assert datagram.isprintable()


async def test_alert_agent_makes_a_running_publisher_re_read(tmp_path: Path) -> None:
    path = tmp_path / "supervise.sock"
    reader = FakeCrmMonReader(
        state_from_file(FIXTURES / "01-healthy-n1-primary.xml", resource_id="pgsqld")
    )
    wakeup = Wakeup()
    publisher = PrimaryPublisher(
        store=FakeEtcdStore(),
        layout=KeyLayout("/pg"),
        resolver=_Addresses(),
        writer="n1",
        reassert_interval=timedelta(seconds=10),
    )
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            await tg.start(partial(serve_nudges, path, wakeup))
            await tg.start(
                partial(
                    serve_publisher,
                    reader=reader,
                    publisher=publisher,
                    wakeup=wakeup,
                    interval=timedelta(hours=1),
                    retry_interval=timedelta(hours=1),
                )
            )
            reads = reader.reads
            await run_agent(path, **promote_env())

            async def re_read() -> bool:
                return reader.reads > reads

            await eventually(re_read)
        tg.cancel_scope.cancel()


async def test_socket_goes_to_the_named_group(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    path = tmp_path / "supervise.sock"
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(5):
            await tg.start(partial(serve_nudges, path, Wakeup(), group=group))
        assert path.stat().st_gid == os.getgid()
        tg.cancel_scope.cancel()


async def test_missing_directory_or_group_is_a_config_error(tmp_path: Path) -> None:
    with anyio.fail_after(5), pytest.raises(NudgeSocketError, match="does not exist"):
        await serve_nudges(tmp_path / "missing" / "s.sock", Wakeup())
    with anyio.fail_after(5), pytest.raises(NudgeSocketError, match="no-such-group"):
        await serve_nudges(tmp_path / "s.sock", Wakeup(), group="no-such-group-pgcm")


class _Addresses:
    async def address_of(self, node: object) -> str:
        return "10.0.0.11"


@pytest.mark.parametrize(
    ("datagram", "node"),
    [
        (b"task=promote rsc=pgsqld node=n2 rc=0", "n2"),
        (b"<13>Dec  7 07:10:21 pgcm-alert-agent: task=promote rsc=pgsqld node=n2 rc=0", "n2"),
        (b"task=promote rsc=pgsqld node=n2 rc=1", None),  # the promote failed
        (b"task=demote rsc=pgsqld node=n2 rc=0", None),
        (b"task=promote rsc=pgsqld node= rc=0", None),
        (b"task=promote rsc=pgsqld rc=0", None),
        (b"task=promote rsc=pgsqld node=n\xff2 rc=0", None),  # not ASCII
        (b"task=promote node=" + b"n" * 256 + b" rc=0", None),  # longer than a node name
        (b"task=promote node=n2 node=n3 rc=0", "n2"),  # the first of a repeated field
        (b"garbage", None),
    ],
)
def test_only_a_successful_promote_names_a_node(datagram: bytes, node: str | None) -> None:
    assert promoted_node(datagram) == node


def test_a_promoted_node_is_taken_once_and_counts_as_a_promotion() -> None:
    wakeup = Wakeup()
    wakeup.set(promoted="n2")
    assert wakeup.take_promotion()
    assert wakeup.take_promoted() == "n2"
    assert wakeup.take_promoted() is None
