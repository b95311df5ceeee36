"""Hostile requests against the real ``pgcm-supervise`` process: bounded answers, no stall.

A caller once sent a 1 MB ``migrate_to`` target: it went whole into the error message,
and encoding that into gRPC trailers (pure-Python HPACK Huffman, quadratic) kept the
server busy for minutes, during which it neither published nor obeyed SIGTERM. Here
every rpc gets oversized, undecodable, wrongly typed and out-of-range requests and
oversized metadata, over and over, while the test deletes the primary's key in etcd
and waits for the publisher to write it back. Every answer must carry the right status
and a short message that quotes nothing sent; ``fail_after`` bounds the whole test
against hanging (it is not a speed assertion).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Final, NamedTuple

import anyio
import pytest
from grpclib import GRPCError
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Status
from grpclib.encoding.base import CodecBase

from pgcm_common.etcd import open_etcd
from pgcm_common.proto.failover import MigrateRequest, PauseRequest
from pgcm_common.records import KeyLayout
from pgcm_testkit.etcd import EtcdMember, random_key
from pgcm_testkit.eventually import eventually
from pgcm_testkit.pacemaker import PacemakerNode
from pgcm_testkit.process import daemon_env, free_tcp_port, json_events, wait_until

pytestmark = pytest.mark.integration

RPCS: Final = ("health_check", "pause", "resume", "migrate", "unmigrate", "migrate_to")
MEGABYTE: Final = 1_000_000
# Field 1 as a string of 1 MB: far above any request size limit.
OVERSIZED: Final = bytes(MigrateRequest("n" * MEGABYTE))
TRUNCATED_VARINT: Final = b"\x08\xff"  # undecodable for every message type
ROUNDS: Final = 3


class Hostile(NamedTuple):
    rpc: str
    payload: bytes
    metadata: dict[str, str]
    status: Status


def hostile_requests() -> list[Hostile]:
    cases = []
    for rpc in RPCS:
        cases += [
            Hostile(rpc, OVERSIZED, {}, Status.RESOURCE_EXHAUSTED),
            Hostile(rpc, TRUNCATED_VARINT, {}, Status.INVALID_ARGUMENT),
            Hostile(rpc, b"", {"x-junk": "j" * 9000}, Status.RESOURCE_EXHAUSTED),
        ]
    targets = ["n" * 256, "n" * 4000, "pcmk1\n", "pcmk1\x00", "\u2028"]
    cases += [
        Hostile("migrate_to", bytes(MigrateRequest(t)), {}, Status.INVALID_ARGUMENT)
        for t in targets
    ]
    cases += [
        Hostile("migrate_to", b"\x0a\x02\xff\xfe", {}, Status.INVALID_ARGUMENT),  # not UTF-8
        Hostile("pause", b"\x0a\x03abc", {}, Status.INVALID_ARGUMENT),  # wrong wire type
        Hostile(
            "pause",
            bytes(PauseRequest(timeout=5, expiry=2**31 - 1)),
            {},
            Status.INVALID_ARGUMENT,
        ),
    ]
    return cases


class RawCodec(CodecBase):
    """Sends and receives message bodies as the bytes they are."""

    __content_subtype__ = "proto"

    def encode(self, message: bytes, message_type: type[bytes]) -> bytes:
        return message

    def decode(self, data: bytes, message_type: type[bytes]) -> bytes:
        return data


@contextmanager
def supervise(
    tmp_path: Path, etcd: EtcdMember, node: PacemakerNode, namespace: str, port: int
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log = tmp_path / "supervise.log"
    argv = [
        sys.executable, "-m", "pgcm_supervise", "--log-format", "json", "run",
        "--etcd-endpoints", etcd.endpoint, "--cluster-namespace", namespace,
        "--command-prefix", ",".join(node.command_prefix),
        "--resource-id", node.resource_id, "--node-name", node.name,
        "--nudge-socket", str(tmp_path / "supervise.sock"),
        "--bind-address", f"127.0.0.1:{port}",
        "--pgbouncer-host", str(tmp_path / "no-pgbouncer"),
        "--crm-mon-interval", "200ms", "--reassert-interval", "500ms",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=out, env=daemon_env())
    try:
        yield process, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@asynccontextmanager
async def raw_channel(port: int) -> AsyncIterator[Channel]:
    channel = Channel("127.0.0.1", port, codec=RawCodec())
    try:
        yield channel
    finally:
        channel.close()


async def answer(channel: Channel, case: Hostile) -> GRPCError | None:
    method = UnaryUnaryMethod(channel, f"/failover.Failover/{case.rpc}", bytes, bytes)
    try:
        await method(case.payload, metadata=case.metadata)
    except GRPCError as exc:
        return exc
    return None


async def test_hostile_requests_get_bounded_answers_while_the_publisher_keeps_publishing(
    tmp_path: Path, etcd: EtcdMember, pacemaker_node: PacemakerNode
) -> None:
    namespace = random_key("hostile").decode()
    layout = KeyLayout(namespace)
    port = free_tcp_port()
    cases = hostile_requests()
    answers: list[tuple[Hostile, GRPCError | None]] = []
    with supervise(tmp_path, etcd, pacemaker_node, namespace, port) as (process, log):
        await anyio.to_thread.run_sync(
            lambda: wait_until(
                lambda: any(e.get("event") == "etcd.master.publish" for e in json_events(log)),
                deadline_s=60,
                what="first publication",
            )
        )
        republished = 0
        async with open_etcd(etcd.settings()) as store:
            with anyio.fail_after(120):
                flooding = anyio.Event()

                async def flood() -> None:
                    async with raw_channel(port) as channel:
                        while not flooding.is_set() or not answers:
                            answers.extend([(c, await answer(channel, c)) for c in cases])

                async def published() -> bool:
                    return await store.get(layout.master) is not None

                async def republications() -> None:
                    nonlocal republished
                    for _ in range(ROUNDS):
                        assert await store.delete(layout.master)
                        await eventually(published)
                        republished += 1
                    flooding.set()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(flood)
                    tg.start_soon(republications)
        process.send_signal(signal.SIGTERM)
        returncode = await anyio.to_thread.run_sync(lambda: process.wait(timeout=30))
        text = log.read_text(errors="replace")
    assert republished == ROUNDS
    assert returncode == 0, text[-4000:]
    assert len(answers) >= len(cases)
    wrong = [
        (case.rpc, case.payload[:20], None if error is None else error.status)
        for case, error in answers
        if error is None or error.status is not case.status
    ]
    assert wrong == []
    for _, error in answers:
        assert error is not None
        message = error.message or ""
        assert len(message) <= 100, message
        assert "nnnnnnnn" not in message
        assert "jjjjjjjj" not in message
    # Nothing a caller sent is logged beyond a short prefix.
    assert "n" * 64 not in text
    assert "j" * 64 not in text
