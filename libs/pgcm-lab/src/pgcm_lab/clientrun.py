"""Run :mod:`pgcm_lab.clients` in the lab's app node and check its commits afterwards.

Used by ``pgcm-lab clients`` and by the fault suite::

    async with reconnecting_clients(lab, clients=4) as log:
        await lab.kill_node(primary)
        log.mark_fault("kill-node")
        ...
    lost = await check_commits(lab, log)
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import anyio
from anyio.streams.text import TextReceiveStream

from pgcm_lab.clients import TABLE, ClientsLog, lost_commits, parse_line, worker_argv
from pgcm_lab.errors import LabError
from pgcm_lab.lab import Lab
from pgcm_lab.topology import APP_NODE

__all__ = ["check_commits", "prepare_table", "reconnecting_clients"]

_FLOWING: Final = 10  # commits before the block starts: the load is running
_STOP_WITHIN_S: Final = 70.0  # one statement timeout, and some


async def prepare_table(lab: Lab, table: str = TABLE) -> str:
    """Create (or empty) the clients' table on the primary; return the primary.

    Raises:
        LabError: there is no primary.
    """
    primary = await lab.primary()
    if primary is None:
        raise LabError("no primary: cannot create the clients' table")
    await lab.psql(primary, f"create table if not exists {table} (client int, n bigint, "
                            "at timestamptz default now(), primary key (client, n))")  # fmt: skip
    await lab.psql(primary, f"truncate {table}")
    return primary


@asynccontextmanager
async def reconnecting_clients(
    lab: Lab, *, clients: int = 4, table: str = TABLE
) -> AsyncIterator[ClientsLog]:
    """Run ``clients`` reconnecting clients through the app node's PgBouncer.

    The block starts once the clients have committed; on exit they are stopped
    (SIGTERM: each ends after its statement in flight) and the log is complete.

    Raises:
        LabError: the app node is not running or there is no primary.
        TimeoutError: the clients did not commit within 30 s.
    """
    await prepare_table(lab, table)
    pid = lab.init_pid(APP_NODE)
    if pid is None:
        raise LabError("the app node is not running")
    host = str(lab.topology.app.address)
    argv = ["nsenter", "-t", str(pid), "-n", "--",
            *worker_argv(sys.executable, host, clients=clients, table=table)]  # fmt: skip
    log = ClientsLog()
    process = await anyio.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    async with process, anyio.create_task_group() as tg:
        ready = anyio.Event()

        async def read() -> None:
            assert process.stdout is not None  # noqa: S101  # opened with a pipe
            buffered = ""
            async for chunk in TextReceiveStream(process.stdout):
                buffered += chunk
                *lines, buffered = buffered.split("\n")
                for line in lines:
                    if line == "ready":
                        ready.set()
                    elif (outcome := parse_line(line)) is not None:
                        log.add(outcome)
                    elif line.strip():
                        lab.progress(f"clients: {line[:300]}")

        tg.start_soon(read)
        with anyio.fail_after(30):
            await ready.wait()
            while len(log.acked) < _FLOWING:  # noqa: ASYNC110  # polling the log
                await anyio.sleep(0.05)
        try:
            yield log
        finally:
            process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(_STOP_WITHIN_S, shield=True):
                await process.wait()
            if process.returncode is None:
                process.kill()
                with anyio.move_on_after(5, shield=True):
                    await process.wait()


async def check_commits(lab: Lab, log: ClientsLog, table: str = TABLE) -> list[tuple[int, int]]:
    """Return the acknowledged commits missing on the current primary (empty: none lost).

    Raises:
        LabError: there is no primary.
    """
    primary = await lab.primary()
    if primary is None:
        raise LabError("no primary to check the commits on")
    rows = await lab.psql(primary, f"select client, n from {table}")  # noqa: S608  # our table
    stored = []
    for line in rows.splitlines():
        client, _, n = line.partition("|")
        stored.append((int(client), int(n)))
    return lost_commits(log.acked, stored)
