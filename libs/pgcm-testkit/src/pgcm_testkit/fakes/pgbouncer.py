"""A fake PgBouncer admin console implementing :class:`PgBouncerAdminProtocol`.

It models what services rely on: PAUSE waits for open transactions and, when the
caller's deadline cuts it short, is undone (as the real client does); PAUSE/RESUME and
DISABLE/ENABLE are idempotent; an unknown database is refused with PgBouncer's message;
an unreachable console raises :class:`PgBouncerUnreachable`. The same contract suite
runs against this fake and a real PgBouncer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import final

import anyio

from pgcm_common.pgbouncer import (
    DatabaseRow,
    PgBouncerCommandRefused,
    PgBouncerEndpoint,
    PgBouncerProtocolError,
    PgBouncerState,
    PgBouncerUnreachable,
    PgBouncerVersion,
    PoolRow,
)

__all__ = ["FakePgBouncerAdmin", "fake_database"]


def fake_database(name: str, host: str = "127.0.0.1", port: int = 5432) -> DatabaseRow:
    """Return a SHOW DATABASES row as PgBouncer 1.18 prints it for a plain route."""
    return DatabaseRow(
        name=name,
        host=host,
        port=port,
        database=name,
        force_user=None,
        pool_size=20,
        pool_mode=None,
        max_connections=0,
        current_connections=0,
        paused=False,
        disabled=False,
    )


@final
class FakePgBouncerAdmin:
    """In-memory PgBouncer admin console; inspect ``paused``, ``commands``, ``reloads``."""

    def __init__(
        self,
        databases: Iterable[DatabaseRow] = (),
        *,
        endpoint: PgBouncerEndpoint | None = None,
        version: str = "PgBouncer 1.18.0",
        reachable: bool = True,
    ) -> None:
        """Serve ``databases`` (by name) at ``endpoint``."""
        self._endpoint = endpoint or PgBouncerEndpoint()
        self.databases: dict[str, DatabaseRow] = {row.name: row for row in databases}
        self.version = version
        self.reachable = reachable
        self.paused = False
        self.reloads = 0
        self.commands: list[str] = []
        self.settings: dict[str, str] = {"server_login_retry": "15"}
        # Clients waiting for a server connection, per database (SHOW POOLS cl_waiting).
        self.waiting: dict[str, int] = {}
        self._open_transactions = 0
        self._idle = anyio.Event()
        self._idle.set()

    @property
    def endpoint(self) -> PgBouncerEndpoint:
        """Return the endpoint this fake pretends to be."""
        return self._endpoint

    def _command(self, command: str) -> None:
        if not self.reachable:
            raise PgBouncerUnreachable(f"cannot connect to {self._endpoint} (fake)")
        self.commands.append(command)

    def _database(self, command: str, name: str) -> DatabaseRow:
        try:
            return self.databases[name]
        except KeyError as exc:
            raise PgBouncerCommandRefused(command, "08P01", f"no such database: {name}") from exc

    @asynccontextmanager
    async def hold_transaction(self) -> AsyncIterator[None]:
        """Pretend a client holds a transaction open: PAUSE waits until it ends."""
        self._open_transactions += 1
        self._idle = anyio.Event()
        try:
            yield
        finally:
            self._open_transactions -= 1
            if self._open_transactions == 0:
                self._idle.set()

    async def pause(self) -> None:
        """PAUSE: wait for open transactions; undone if the caller's deadline fires.

        Raises:
            PgBouncerUnreachable: ``reachable`` is False.
        """
        self._command("PAUSE")
        was_paused, self.paused = self.paused, True
        try:
            await self._idle.wait()
        except BaseException:
            # The real client drops the connection and RESUMEs on a fresh one.
            self.paused = was_paused
            self.commands.append("RESUME")
            raise

    async def resume(self) -> None:
        """RESUME; not being paused counts as success."""
        self._command("RESUME")
        self.paused = False

    async def reload(self) -> None:
        """RELOAD: counted in ``reloads``."""
        self._command("RELOAD")
        self.reloads += 1

    async def disable(self, database: str) -> None:
        """DISABLE ``database``.

        Raises:
            PgBouncerCommandRefused: Unknown database.
        """
        command = f"DISABLE {database}"
        self._command(command)
        row = self._database(command, database)
        self.databases[database] = dataclasses.replace(row, disabled=True)

    async def enable(self, database: str) -> None:
        """ENABLE ``database``.

        Raises:
            PgBouncerCommandRefused: Unknown database.
        """
        command = f"ENABLE {database}"
        self._command(command)
        row = self._database(command, database)
        self.databases[database] = dataclasses.replace(row, disabled=False)

    async def show_databases(self) -> tuple[DatabaseRow, ...]:
        """Return the configured rows."""
        self._command("SHOW DATABASES")
        return tuple(self.databases.values())

    async def show_pools(self) -> tuple[PoolRow, ...]:
        """Return one idle pool per database."""
        self._command("SHOW POOLS")
        return tuple(
            PoolRow(
                database=name,
                user="postgres",
                cl_active=self._open_transactions,
                cl_waiting=self.waiting.get(name, 0),
                sv_active=self._open_transactions,
                sv_idle=0,
                sv_used=0,
                sv_tested=0,
                sv_login=0,
                maxwait_us=0,
                pool_mode="transaction",
            )
            for name in self.databases
        )

    async def show_setting(self, key: str) -> str:
        """Return ``settings[key]`` (SHOW CONFIG).

        Raises:
            PgBouncerProtocolError: Unknown setting.
        """
        self._command("SHOW CONFIG")
        try:
            return self.settings[key]
        except KeyError as exc:
            raise PgBouncerProtocolError(f"SHOW CONFIG has no {key!r}") from exc

    async def set_number(self, key: str, value: str) -> None:
        """SET ``key`` = ``value`` in ``settings``."""
        self._command(f"SET {key} = {value}")
        self.settings[key] = value

    async def show_state(self) -> PgBouncerState:
        """Return the state as PgBouncer 1.21+ (with SHOW STATE) would."""
        self._command("SHOW STATE")
        rows = tuple(self.databases.values())
        return PgBouncerState(
            paused=self.paused,
            suspended=False,
            paused_databases=frozenset(row.name for row in rows if row.paused),
            disabled_databases=frozenset(row.name for row in rows if row.disabled),
        )

    async def show_version(self) -> PgBouncerVersion:
        """Return ``version`` parsed."""
        self._command("SHOW VERSION")
        return PgBouncerVersion.parse(self.version)
