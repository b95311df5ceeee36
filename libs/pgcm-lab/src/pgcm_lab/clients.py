"""Reconnecting clients: what an application that retries on error sees during a fault.

pgbench aborts a client on its first connection error, so it cannot show how long an
application that reconnects waits for the new primary. Here N asyncpg clients run in
the app node's network namespace (:func:`worker_argv`, the worker is this module's
``main``), each committing one autocommit ``INSERT (client, n)`` at a time through the
app node's PgBouncer. On any error a client drops its connection, waits
:data:`RETRY_DELAY_S` and connects again. Every transaction is printed as a JSON line
with its wall-clock start and end (the host and the namespaces share the clock), so
the lab can put its own fault marks on the same axis.

:class:`ClientsLog` is the bookkeeping (pure, unit-tested): every error with its class
and time, the longest gap between two successful transactions, the time from a fault
to the first transaction that started after it and succeeded, and the acknowledged
rows, which :func:`lost_commits` checks against what the new primary holds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, final

import anyio

__all__ = [
    "RETRY_DELAY_S",
    "TABLE",
    "ClientsLog",
    "Outcome",
    "lost_commits",
    "main",
    "parse_line",
    "worker_argv",
]

TABLE: Final = "pgcm_clients"
RETRY_DELAY_S: Final = 0.1
# Long enough for PgBouncer's own timeouts (query_wait_timeout, tcp_user_timeout) to
# end a transaction first: the client then sees the error PgBouncer gives it.
STATEMENT_TIMEOUT_S: Final = 60.0
CONNECT_TIMEOUT_S: Final = 5.0
_MESSAGE_MAX: Final = 200


@final
@dataclass(frozen=True, slots=True)
class Outcome:
    """One transaction of one client: started and ended at wall-clock seconds."""

    client: int
    n: int
    started: float
    ended: float
    error_class: str | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        """Whether the commit was acknowledged."""
        return self.error_class is None

    def as_line(self) -> str:
        """The JSON line the worker prints."""
        data: dict[str, object] = {"c": self.client, "n": self.n, "s": self.started,
                                   "e": self.ended}  # fmt: skip
        if self.error_class is not None:
            data["err"] = self.error_class
            data["msg"] = self.message[:_MESSAGE_MAX]
        return json.dumps(data, separators=(",", ":"))


def parse_line(line: str) -> Outcome | None:
    """Parse one worker line; None for anything else (a blank or foreign line)."""
    try:
        data = json.loads(line)
        if not isinstance(data, dict):
            return None
        error = data.get("err")
        return Outcome(
            client=int(data["c"]),
            n=int(data["n"]),
            started=float(data["s"]),
            ended=float(data["e"]),
            error_class=None if error is None else str(error),
            message=str(data.get("msg", "")),
        )
    except (ValueError, KeyError, TypeError):
        return None


@final
@dataclass(slots=True)
class ClientsLog:
    """Everything the clients saw, and the faults marked on the same clock."""

    outcomes: list[Outcome] = field(default_factory=list)
    faults: list[tuple[str, float]] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        """Record one transaction."""
        self.outcomes.append(outcome)

    def mark_fault(self, name: str, at: float | None = None) -> float:
        """Mark fault ``name`` at wall-clock ``at`` (default now); return the time."""
        stamp = time.time() if at is None else at
        self.faults.append((name, stamp))
        return stamp

    @property
    def acked(self) -> set[tuple[int, int]]:
        """``(client, n)`` of every acknowledged commit."""
        return {(o.client, o.n) for o in self.outcomes if o.ok}

    @property
    def errors(self) -> list[Outcome]:
        """Every failed transaction, in the order they ended."""
        return sorted((o for o in self.outcomes if not o.ok), key=lambda o: o.ended)

    def successes_after(self, at: float) -> int:
        """How many commits started at or after ``at`` were acknowledged."""
        return sum(1 for o in self.outcomes if o.ok and o.started >= at)

    def first_success_after(self, at: float) -> float | None:
        """Seconds from ``at`` to the end of the first commit started at or after it."""
        ends = [o.ended for o in self.outcomes if o.ok and o.started >= at]
        return round(min(ends) - at, 3) if ends else None

    def longest_gap(self, since: float | None = None) -> float | None:
        """The longest time (s) between two consecutive acknowledged commits (any client)."""
        ends = sorted(
            o.ended for o in self.outcomes if o.ok and (since is None or o.ended >= since)
        )
        if len(ends) < 2:  # noqa: PLR2004  # a gap needs two ends
            return None
        return round(max(b - a for a, b in itertools.pairwise(ends)), 3)

    def report(self) -> dict[str, object]:
        """A JSON-ready summary; error and fault times are relative to the first fault."""
        origin = self.faults[0][1] if self.faults else self._start()
        errors = self.errors
        return {
            "clients": len({o.client for o in self.outcomes}),
            "transactions": len(self.outcomes),
            "committed": sum(1 for o in self.outcomes if o.ok),
            "errors": len(errors),
            "error_classes": dict(Counter(str(o.error_class) for o in errors)),
            "error_list": [
                {
                    "client": o.client,
                    "at_s": round(o.ended - origin, 3),
                    "class": o.error_class,
                    "message": o.message,
                }
                for o in errors
            ],
            "longest_gap_s": self.longest_gap(),
            "faults": [
                {
                    "fault": name,
                    "at_s": round(at - origin, 3),
                    "first_success_s": self.first_success_after(at),
                }
                for name, at in self.faults
            ],
        }

    def _start(self) -> float:
        return min((o.started for o in self.outcomes), default=0.0)


def lost_commits(
    acked: Iterable[tuple[int, int]], stored: Iterable[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Acknowledged ``(client, n)`` rows missing from ``stored``, sorted."""
    return sorted(set(acked) - set(stored))


def worker_argv(python: str, host: str, *, clients: int, table: str = TABLE) -> list[str]:
    """The worker's command line (prefix it with ``nsenter -t APP -n --``)."""
    return [python, "-m", "pgcm_lab.clients", "--host", host, "--clients", str(clients),
            "--table", table]  # fmt: skip


async def _client(number: int, host: str, table: str, stop: anyio.Event) -> None:
    import asyncpg  # noqa: PLC0415  # only the worker needs it, not the lab driver

    n, conn = 0, None
    while not stop.is_set():
        n += 1
        started = time.time()
        try:
            if conn is None:
                conn = await asyncpg.connect(
                    host=host, port=6432, user="postgres", database="postgres",
                    statement_cache_size=0, timeout=CONNECT_TIMEOUT_S,
                )  # fmt: skip
            # Simple query protocol: transaction pooling breaks prepared statements.
            sql = f"insert into {table} (client, n) values ({number}, {n})"  # noqa: S608  # ints
            with anyio.fail_after(STATEMENT_TIMEOUT_S):
                await conn.execute(sql)
            outcome = Outcome(number, n, started, time.time())
        except Exception as exc:  # noqa: BLE001  # every error is what we record
            outcome = Outcome(number, n, started, time.time(), type(exc).__name__, str(exc))
            if conn is not None:
                conn.terminate()
            conn = None
        sys.stdout.write(outcome.as_line() + "\n")
        sys.stdout.flush()
        if not outcome.ok:
            await anyio.sleep(RETRY_DELAY_S)
    if conn is not None:
        conn.terminate()


async def _work(host: str, clients: int, table: str) -> None:
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        for number in range(clients):
            tg.start_soon(_client, number, host, table, stop)
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            sys.stdout.write("ready\n")
            sys.stdout.flush()
            async for _ in signals:
                stop.set()
                break


def main(argv: Sequence[str] | None = None) -> int:
    """The worker: run the clients until SIGTERM, one JSON line per transaction."""
    parser = argparse.ArgumentParser(prog="python -m pgcm_lab.clients", description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--table", default=TABLE)
    args = parser.parse_args(argv)
    anyio.run(_work, args.host, args.clients, args.table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
