"""PgBouncerAdmin keeps the connection its PAUSE used for the RESUME, and falls back.

A scripted admin console on a unix socket (the seam: the wire protocol) records every
login and every command per connection, so the tests see which connection a RESUME
was sent on. The real PgBouncer runs in tests/integration/test_pgbouncer_admin.py.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream
from structlog.testing import capture_logs

from pgcm_common.pgbouncer import (
    PgBouncerAdmin,
    PgBouncerCommandRefused,
    PgBouncerEndpoint,
    PgBouncerSettings,
)

_INT32 = struct.Struct("!i")
PORT = 6432


@dataclass
class ScriptedConsole:
    """Answers every login and command; ``silent`` commands never get an answer."""

    drop_after_pause: bool = False
    silent: frozenset[str] = frozenset()
    refused: frozenset[str] = frozenset()
    # One list of commands per accepted connection, in login order.
    connections: list[list[str]] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)

    async def serve(self, stream: SocketStream) -> None:
        async with stream:
            reader = BufferedByteReceiveStream(stream)
            try:
                (length,) = _INT32.unpack(await reader.receive_exactly(4))
                await reader.receive_exactly(length - 4)
                commands: list[str] = []
                index = len(self.connections)
                self.connections.append(commands)
                await stream.send(_msg(b"R", _INT32.pack(0)) + _msg(b"Z", b"I"))
                while True:
                    kind = await reader.receive_exactly(1)
                    (length,) = _INT32.unpack(await reader.receive_exactly(4))
                    payload = await reader.receive_exactly(length - 4)
                    if kind == b"X":
                        self.closed.append(index)
                        return
                    sql = payload.rstrip(b"\0").decode()
                    commands.append(sql)
                    if sql in self.silent:
                        await anyio.sleep_forever()
                    await stream.send(self._answer(sql))
                    if sql == "PAUSE" and self.drop_after_pause:
                        self.closed.append(index)
                        return
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.IncompleteRead):
                self.closed.append(len(self.connections) - 1)

    def _answer(self, sql: str) -> bytes:
        if sql in self.refused:
            fields = b"SERROR\0C08P01\0Mpooler is not paused/suspended\0\0"
            return _msg(b"E", fields) + _msg(b"Z", b"I")
        return _msg(b"C", sql.encode() + b"\0") + _msg(b"Z", b"I")


def _msg(kind: bytes, payload: bytes) -> bytes:
    return kind + _INT32.pack(len(payload) + 4) + payload


@asynccontextmanager
async def console_at(directory: Path, console: ScriptedConsole) -> AsyncIterator[PgBouncerAdmin]:
    listener = await anyio.create_unix_listener(directory / f".s.PGSQL.{PORT}")
    settings = PgBouncerSettings(
        host=str(directory), port=PORT, connect_timeout=timedelta(seconds=1)
    )
    async with anyio.create_task_group() as tg, listener:
        tg.start_soon(listener.serve, console.serve)
        yield PgBouncerAdmin(settings, PgBouncerEndpoint(host=str(directory), port=PORT))
        tg.cancel_scope.cancel()


async def test_resume_runs_on_the_connection_the_pause_used(tmp_path: Path) -> None:
    console = ScriptedConsole()
    with anyio.fail_after(10):
        async with console_at(tmp_path, console) as admin:
            await admin.pause()
            await admin.resume()
            await admin.resume()  # nothing kept any more: a fresh connection
            await wait_closed(console, 2)
    assert console.connections == [["PAUSE", "RESUME"], ["RESUME"]]
    assert sorted(console.closed) == [0, 1]


async def test_a_second_pause_closes_the_connection_kept_by_the_first(tmp_path: Path) -> None:
    console = ScriptedConsole()
    with anyio.fail_after(10):
        async with console_at(tmp_path, console) as admin:
            await admin.pause()
            await admin.pause()
            await admin.resume()
            await wait_closed(console, 2)
    assert console.connections == [["PAUSE"], ["PAUSE", "RESUME"]]


async def test_a_kept_connection_that_broke_is_replaced_by_a_new_login(tmp_path: Path) -> None:
    console = ScriptedConsole(drop_after_pause=True)
    with capture_logs() as logs, anyio.fail_after(10):
        async with console_at(tmp_path, console) as admin:
            await admin.pause()
            await wait_closed(console, 1)
            await admin.resume()
    assert console.connections == [["PAUSE"], ["RESUME"]]
    assert [e["event"] for e in logs].count("clients.pgbouncer.resume.reconnect") == 1


async def test_a_kept_connection_that_does_not_answer_is_given_up(tmp_path: Path) -> None:
    # Only the kept connection hangs: the first RESUME is swallowed, the next answered.
    console = ScriptedConsole()
    with capture_logs() as logs, anyio.fail_after(10):
        async with console_at(tmp_path, console) as admin:
            await admin.pause()
            console.silent = frozenset({"RESUME"})
            task_done = anyio.Event()

            async def resume() -> None:
                await admin.resume()
                task_done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(resume)
                await wait_commands(console, 0, ["PAUSE", "RESUME"])
                console.silent = frozenset()
            assert task_done.is_set()
    assert console.connections == [["PAUSE", "RESUME"], ["RESUME"]]
    assert [e["event"] for e in logs].count("clients.pgbouncer.resume.reconnect") == 1


async def test_a_refusal_on_the_kept_connection_is_not_sent_again(tmp_path: Path) -> None:
    console = ScriptedConsole()
    with anyio.fail_after(10):
        async with console_at(tmp_path, console) as admin:
            await admin.pause()
            console.refused = frozenset({"RESUME"})
            # "not paused" is success, read on the kept connection: no second login.
            await admin.resume()
    assert console.connections == [["PAUSE", "RESUME"]]


async def test_another_refusal_on_the_kept_connection_propagates(tmp_path: Path) -> None:
    console = ScriptedConsole()
    console_answer = console._answer

    def refuse_otherwise(sql: str) -> bytes:
        if sql == "RESUME":
            fields = b"SERROR\0C08P01\0Mpermission denied\0\0"
            return _msg(b"E", fields) + _msg(b"Z", b"I")
        return console_answer(sql)

    console._answer = refuse_otherwise  # type: ignore[method-assign]
    with anyio.fail_after(10):
        async with console_at(tmp_path, console) as admin:
            await admin.pause()
            with pytest.raises(PgBouncerCommandRefused):
                await admin.resume()
    assert console.connections == [["PAUSE", "RESUME"]]


async def wait_closed(console: ScriptedConsole, count: int) -> None:
    while len(console.closed) < count:  # noqa: ASYNC110 - the fake has no event to await
        await anyio.sleep(0.01)


async def wait_commands(console: ScriptedConsole, index: int, commands: list[str]) -> None:
    while len(console.connections) <= index or console.connections[index] != commands:  # noqa: ASYNC110
        await anyio.sleep(0.01)
