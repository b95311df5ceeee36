"""A long-lived admin console connection for the commands pgcm-proxy sends on every change.

Opening an admin console connection (a socket, then an md5 or SCRAM login) costs about
2 ms on the small VM the benchmarks run on; RELOAD or SHOW DATABASES on an open one
about 0.5 ms. pgcm-proxy sends both for every primary change, and the switchover waits
for every proxy's acknowledgement, which comes after them. :class:`RoutingConsole`
keeps one connection per PgBouncer and reuses it.

PAUSE, RESUME and the other commands stay with :class:`PgBouncerAdmin`, on the same
simple-query client (ADR 0005) but one connection each (a PAUSE's connection is kept
only for the RESUME that follows it): dropping that connection is the first step of
undoing an abandoned PAUSE (ADR 0003).
"""

from __future__ import annotations

import re
from typing import Final, final

import anyio
import structlog

from pgcm_common._pgbouncer.errors import (
    PGBOUNCER_ERRORS,
    PgBouncerCommandRefused,
    PgBouncerProtocolError,
    PgBouncerUnreachable,
)
from pgcm_common._pgbouncer.events import logged_reload
from pgcm_common._pgbouncer.rows import DatabaseRow, PoolRow
from pgcm_common._pgbouncer.settings import PgBouncerEndpoint, PgBouncerSettings
from pgcm_common._pgwire.wire import (
    SimpleQueryConnection,
    SimpleQueryResult,
    close_quietly,
    connect_simple_query,
)

__all__ = ["RoutingConsole", "routing_consoles_for"]

_log = structlog.get_logger()
# SET takes the key and value as text in the command: only a setting name and a plain
# number ever go there (the proxy sets numeric timing settings only).
_SETTING: Final = re.compile(r"[a-z_]{1,64}")
_NUMBER: Final = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,6})?")


@final
class RoutingConsole:
    """RELOAD and SHOW DATABASES on one PgBouncer, over a connection kept open.

    The connection is opened on first use. A command that fails on a connection opened
    earlier is sent once more on a fresh one: PgBouncer may have restarted since the
    last command (tried with PgBouncer 1.18, ``client_idle_timeout`` did not close an
    idle admin connection), and both commands can safely run twice. A failure or cancellation in
    the middle of a command discards the connection, whose place in the conversation is
    then unknown; a refusal by PgBouncer does not (its answer was read to the end).
    """

    def __init__(
        self, settings: PgBouncerSettings, endpoint: PgBouncerEndpoint | None = None
    ) -> None:
        """Talk to ``endpoint`` (default: the first of ``settings.endpoints``)."""
        self._settings = settings
        self._endpoint = endpoint or settings.endpoints[0]
        self._connection: SimpleQueryConnection | None = None
        self._lock = anyio.Lock()
        self._log = _log.bind(component="pgbouncer", endpoint=str(self._endpoint))

    @property
    def endpoint(self) -> PgBouncerEndpoint:
        """Return the admin endpoint this console talks to."""
        return self._endpoint

    async def reload(self) -> None:
        """Send RELOAD: PgBouncer re-reads its ini file; new routes apply to new server links.

        Raises:
            PgBouncerUnreachable: No admin connection.
            PgBouncerAuthError: Login refused.
            PgBouncerCommandRefused: PgBouncer refused RELOAD.
        """
        await logged_reload(self._log, lambda: self._query("RELOAD"))

    async def show_databases(self) -> tuple[DatabaseRow, ...]:
        """Return SHOW DATABASES as typed rows.

        Raises:
            PgBouncerUnreachable: No admin connection.
            PgBouncerAuthError: Login refused.
            PgBouncerProtocolError: Unparseable output.
        """
        result = await self._query("SHOW DATABASES")
        return tuple(DatabaseRow.from_record(record) for record in result.records())

    async def show_pools(self) -> tuple[PoolRow, ...]:
        """Return SHOW POOLS as typed rows.

        Raises:
            PgBouncerUnreachable: No admin connection.
            PgBouncerAuthError: Login refused.
            PgBouncerProtocolError: Unparseable output.
        """
        result = await self._query("SHOW POOLS")
        return tuple(PoolRow.from_record(record) for record in result.records())

    async def show_setting(self, key: str) -> str:
        """Return the current value of setting ``key`` (SHOW CONFIG).

        Raises:
            ValueError: ``key`` is not a setting name.
            PgBouncerUnreachable: No admin connection.
            PgBouncerAuthError: Login refused.
            PgBouncerProtocolError: No such setting in the output.
        """
        _check_setting(key)
        result = await self._query("SHOW CONFIG")
        for record in result.records():
            if record.get("key") == key:
                return record.get("value") or ""
        raise PgBouncerProtocolError(f"SHOW CONFIG has no {key!r}")

    async def set_number(self, key: str, value: str) -> None:
        """``SET key = value`` for a numeric setting (in effect until changed or RELOAD).

        Raises:
            ValueError: ``key`` is not a setting name or ``value`` not a plain number.
            PgBouncerUnreachable: No admin connection.
            PgBouncerAuthError: Login refused.
            PgBouncerCommandRefused: PgBouncer refused the setting.
        """
        _check_setting(key)
        if not _NUMBER.fullmatch(value):
            raise ValueError(f"not a plain number for {key}: {value[:40]!r}")
        await self._query(f"SET {key} = {value}")

    async def aclose(self) -> None:
        """Close the connection, if one is open (also while being cancelled)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await close_quietly(connection)

    async def _query(self, sql: str) -> SimpleQueryResult:
        async with self._lock:
            if self._connection is None:
                return await self._query_on(await self._connect(), sql)
            try:
                return await self._query_on(self._connection, sql)
            except PgBouncerUnreachable as exc:
                self._log.info(
                    "pgbouncer.console.reconnect",
                    error=str(exc),
                    msg="the kept admin connection broke; sending again on a new one",
                )
            return await self._query_on(await self._connect(), sql)

    async def _connect(self) -> SimpleQueryConnection:
        password = self._settings.password
        self._connection = await connect_simple_query(
            self._endpoint,
            user=self._settings.user,
            password=None if password is None else password.get_secret_value(),
            database=self._settings.database,
            connect_timeout=self._settings.connect_timeout,
            errors=PGBOUNCER_ERRORS,
        )
        return self._connection

    async def _query_on(self, connection: SimpleQueryConnection, sql: str) -> SimpleQueryResult:
        try:
            return await connection.query(sql)
        except PgBouncerCommandRefused:
            raise  # answered in full: the connection is still in step
        except BaseException:
            await self.aclose()
            raise


def _check_setting(key: str) -> None:
    if not _SETTING.fullmatch(key):
        raise ValueError(f"not a PgBouncer setting name: {key[:40]!r}")


def routing_consoles_for(settings: PgBouncerSettings) -> tuple[RoutingConsole, ...]:
    """Return one console per configured endpoint (``so_reuseport`` siblings)."""
    return tuple(RoutingConsole(settings, endpoint) for endpoint in settings.endpoints)
