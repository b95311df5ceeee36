"""The PgBouncer admin console client: PAUSE, RESUME, RELOAD, DISABLE/ENABLE and SHOW.

Every command goes through the simple-query client of :mod:`pgcm_common._pgwire.wire`, the one
protocol stack pgcm speaks to the console (ADR 0005). Each operation opens its own
short connection: admin commands are rare, and a fresh connection cannot inherit a
half-finished conversation from an earlier cancelled call. One exception: the
connection a PAUSE succeeded on is kept until the next RESUME, which then costs one
query instead of a login as well (a switchover's clients wait for it). A kept connection
that broke meanwhile (PgBouncer restarted) is replaced by a fresh one for that RESUME.

WAIT_CLOSE is never sent: on PgBouncer 1.18 it leaves the pooler in a state where every
later PAUSE returns at once without waiting for transactions, which would make a
switchover unsafe.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol, final

import anyio
import structlog

from pgcm_common._pgbouncer.errors import PGBOUNCER_ERRORS, PgBouncerCommandRefused
from pgcm_common._pgbouncer.events import logged_reload
from pgcm_common._pgbouncer.rows import DatabaseRow, PgBouncerState, PgBouncerVersion, PoolRow
from pgcm_common._pgbouncer.settings import PgBouncerEndpoint, PgBouncerSettings
from pgcm_common._pgwire.wire import (
    SimpleQueryConnection,
    close_quietly,
    connect_simple_query,
)
from pgcm_common.errors import PgBouncerError

__all__ = ["PgBouncerAdmin", "PgBouncerAdminProtocol", "admins_for"]

# PgBouncer 1.18 answers a second PAUSE with "already suspended/paused" and a RESUME of
# a running pooler with "pooler is not paused/suspended" (SQLSTATE 08P01). Both mean
# the state we asked for already holds; other versions word it differently, hence the
# loose, case-insensitive match.
_ALREADY_PAUSED = re.compile(r"already\s+(suspended|paused)", re.IGNORECASE)
_NOT_PAUSED = re.compile(r"not\s+(paused|suspended)", re.IGNORECASE)
_UNKNOWN_COMMAND = re.compile(r"invalid command", re.IGNORECASE)
# A database name goes into the command text (the console has no parameters): allow
# only what PgBouncer itself accepts unquoted, so nothing can be injected.
_DATABASE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,63}")

_log = structlog.get_logger()


class PgBouncerAdminProtocol(Protocol):
    """What services need from one PgBouncer's admin console (a seam: tests use a verified fake)."""

    @property
    def endpoint(self) -> PgBouncerEndpoint:
        """Return the admin endpoint this client talks to."""
        ...

    async def pause(self) -> None:
        """PAUSE, undone before returning if the caller's deadline cuts it short."""
        ...

    async def resume(self) -> None:
        """RESUME; succeeds when PgBouncer was not paused."""
        ...

    async def reload(self) -> None:
        """RELOAD the configuration file."""
        ...

    async def disable(self, database: str) -> None:
        """Refuse new client connections to ``database``."""
        ...

    async def enable(self, database: str) -> None:
        """Accept new client connections to ``database`` again."""
        ...

    async def show_databases(self) -> tuple[DatabaseRow, ...]:
        """Return the rows of SHOW DATABASES."""
        ...

    async def show_pools(self) -> tuple[PoolRow, ...]:
        """Return the rows of SHOW POOLS."""
        ...

    async def show_state(self) -> PgBouncerState:
        """Return what PgBouncer tells about being paused."""
        ...

    async def show_version(self) -> PgBouncerVersion:
        """Return the running version."""
        ...


def admins_for(settings: PgBouncerSettings) -> tuple[PgBouncerAdmin, ...]:
    """Return one admin client per configured endpoint (``so_reuseport`` siblings)."""
    return tuple(PgBouncerAdmin(settings, endpoint) for endpoint in settings.endpoints)


def _check_database_name(database: str) -> str:
    if _DATABASE_NAME.fullmatch(database) is None:
        raise PgBouncerError(f"refusing to send database name {database!r} to PgBouncer")
    return database


@final
class PgBouncerAdmin:
    """Client of one PgBouncer admin console (unix socket or TCP)."""

    def __init__(
        self, settings: PgBouncerSettings, endpoint: PgBouncerEndpoint | None = None
    ) -> None:
        """Talk to ``endpoint`` (default: the first of ``settings.endpoints``)."""
        self._settings = settings
        self._endpoint = endpoint or settings.endpoints[0]
        # The connection our last successful PAUSE ran on, in step (its answer was read
        # to the end), kept for the RESUME that lifts that pause.
        self._paused_on: SimpleQueryConnection | None = None
        self._log = _log.bind(component="pgbouncer", endpoint=str(self._endpoint))

    @property
    def endpoint(self) -> PgBouncerEndpoint:
        """Return the admin endpoint this client talks to."""
        return self._endpoint

    def _password(self) -> str | None:
        password = self._settings.password
        return None if password is None else password.get_secret_value()

    async def _connect(self) -> SimpleQueryConnection:
        return await connect_simple_query(
            self._endpoint,
            user=self._settings.user,
            password=self._password(),
            database=self._settings.database,
            connect_timeout=self._settings.connect_timeout,
            errors=PGBOUNCER_ERRORS,
        )

    async def _execute(
        self,
        connection: SimpleQueryConnection,
        command: str,
        tolerated: re.Pattern[str] | None = None,
    ) -> bool:
        """Run ``command``; return False when PgBouncer said the state already holds."""
        try:
            await connection.query(command)
        except PgBouncerCommandRefused as exc:
            if tolerated is not None and tolerated.search(exc.server_message):
                return False
            raise
        return True

    async def _run(self, command: str, tolerated: re.Pattern[str] | None = None) -> bool:
        connection = await self._connect()
        try:
            done = await self._execute(connection, command, tolerated)
        except BaseException:
            # Dropping the socket ends our side of any pending command at once; a polite
            # goodbye would queue behind the very PAUSE we abandon.
            await connection.abort()
            raise
        await close_quietly(connection)
        return done

    @asynccontextmanager
    async def _show_connection(self) -> AsyncIterator[SimpleQueryConnection]:
        connection = await self._connect()
        try:
            yield connection
        finally:
            await close_quietly(connection)

    async def pause(self) -> None:
        """Send PAUSE and wait until every server connection is released.

        PAUSE waits for running transactions, so it can take arbitrarily long: the
        caller bounds it (``with anyio.fail_after(...)``). On success the connection
        stays open for the next :meth:`resume`. If the call ends
        without success — the deadline fired, the caller was cancelled or the
        connection broke — the PAUSE already registered inside PgBouncer is undone:
        the admin connection is dropped, RESUME is sent on a fresh one (shielded,
        bounded by ``cleanup_timeout``) and the state is checked, then the original
        exception propagates.

        Raises:
            PgBouncerUnreachable: No admin connection.
            PgBouncerAuthError: Login refused.
            PgBouncerCommandRefused: PgBouncer refused PAUSE (then nothing is undone).

        Cancellation:
            Safe: PgBouncer is resumed before the cancellation propagates.
        """
        started = time.monotonic()
        connection = await self._connect()
        try:
            first = await self._execute(connection, "PAUSE", _ALREADY_PAUSED)
        except BaseException as exc:
            await connection.abort()
            if not isinstance(exc, PgBouncerCommandRefused):
                self._log.warning(
                    "clients.pgbouncer.pause",
                    msg="PAUSE did not complete; resuming PgBouncer",
                    outcome="abandoned",
                    error=repr(exc),
                    elapsed=time.monotonic() - started,
                )
                with anyio.move_on_after(
                    self._settings.cleanup_timeout.total_seconds(), shield=True
                ) as cleanup:
                    await self._undo_pause()
                if cleanup.cancelled_caught:
                    self._log.error(
                        "clients.pgbouncer.resume",
                        msg="RESUME after an abandoned PAUSE timed out: PgBouncer may be paused",
                        reason="pause_abandoned",
                        outcome="timeout",
                    )
            raise
        await self._keep_for_resume(connection)
        self._log.info(
            "clients.pgbouncer.pause",
            msg="PgBouncer paused" if first else "PgBouncer was already paused",
            outcome="paused" if first else "already_paused",
            elapsed=time.monotonic() - started,
        )

    async def _keep_for_resume(self, connection: SimpleQueryConnection) -> None:
        # A second PAUSE (already paused) replaces the connection kept by the first:
        # one is enough for the RESUME, and none is ever left open behind us.
        previous, self._paused_on = self._paused_on, connection
        if previous is not None:
            await close_quietly(previous)

    async def _resume_on_kept(self) -> bool | None:
        """RESUME on the connection the PAUSE used; None when there is none or it broke.

        Bounded by ``connect_timeout``: on a live connection the answer takes
        milliseconds, and a connection that does not answer is given up for a fresh one
        rather than holding every client longer.
        """
        connection, self._paused_on = self._paused_on, None
        if connection is None:
            return None
        try:
            with anyio.fail_after(self._settings.connect_timeout.total_seconds()):
                resumed = await self._execute(connection, "RESUME", _NOT_PAUSED)
        except PgBouncerCommandRefused:
            await close_quietly(connection)  # an answer read to its end: no retry
            raise
        except (PgBouncerError, TimeoutError) as exc:
            # The RESUME may or may not have arrived: sending it again on a fresh
            # connection is safe ("not paused" counts as success).
            await connection.abort()
            self._log.info(
                "clients.pgbouncer.resume.reconnect",
                error=str(exc) or type(exc).__name__,
                msg="the connection kept since PAUSE broke; sending RESUME on a new one",
            )
            return None
        except BaseException:
            await connection.abort()
            raise
        await close_quietly(connection)
        return resumed

    async def _undo_pause(self) -> None:
        try:
            await self._resume(reason="pause_abandoned")
            state = await self.show_state()
        except PgBouncerError as exc:
            # The caller's own exception is the one that must propagate; this failure is
            # logged loudly because PgBouncer may now hold every client.
            self._log.error(
                "clients.pgbouncer.resume",
                msg="RESUME after an abandoned PAUSE failed: PgBouncer may be paused",
                reason="pause_abandoned",
                outcome="failed",
                error=repr(exc),
            )
            return
        # PgBouncer 1.18 cannot report a global pause (state.paused is None): there the
        # successful RESUME reply is the proof.
        if state.paused:
            self._log.error(
                "clients.pgbouncer.resume",
                msg="PgBouncer still reports paused after RESUME",
                reason="pause_abandoned",
                outcome="still_paused",
            )

    async def resume(self) -> None:
        """Send RESUME; a PgBouncer that is not paused counts as success.

        Sent on the connection kept since our PAUSE when there is one and it still
        answers, else on a fresh connection.

        Raises:
            PgBouncerUnreachable: No admin connection.
            PgBouncerAuthError: Login refused.
            PgBouncerCommandRefused: PgBouncer refused RESUME.
        """
        await self._resume(reason="requested")

    async def _resume(self, *, reason: str) -> None:
        started = time.monotonic()
        resumed = await self._resume_on_kept()
        if resumed is None:
            resumed = await self._run("RESUME", _NOT_PAUSED)
        self._log.info(
            "clients.pgbouncer.resume",
            msg="PgBouncer resumed" if resumed else "PgBouncer was not paused",
            outcome="resumed" if resumed else "not_paused",
            reason=reason,
            elapsed=time.monotonic() - started,
        )

    async def reload(self) -> None:
        """Send RELOAD: PgBouncer re-reads its ini file; new routes apply to new server links.

        Raises:
            PgBouncerUnreachable: No admin connection.
            PgBouncerAuthError: Login refused.
            PgBouncerCommandRefused: PgBouncer refused RELOAD.
        """
        await logged_reload(self._log, lambda: self._run("RELOAD"))

    async def disable(self, database: str) -> None:
        """Send ``DISABLE <database>``: new clients of it are refused (idempotent).

        Raises:
            PgBouncerError: ``database`` is not a plain name.
            PgBouncerCommandRefused: Unknown database or refused.
            PgBouncerUnreachable: No admin connection.
        """
        await self._run(f"DISABLE {_check_database_name(database)}")
        self._log.info("clients.pgbouncer.disable", database=database)

    async def enable(self, database: str) -> None:
        """Send ``ENABLE <database>`` (idempotent).

        Raises:
            PgBouncerError: ``database`` is not a plain name.
            PgBouncerCommandRefused: Unknown database or refused.
            PgBouncerUnreachable: No admin connection.
        """
        await self._run(f"ENABLE {_check_database_name(database)}")
        self._log.info("clients.pgbouncer.enable", database=database)

    async def show_databases(self) -> tuple[DatabaseRow, ...]:
        """Return SHOW DATABASES as typed rows.

        Raises:
            PgBouncerUnreachable: No admin connection.
            PgBouncerProtocolError: Unparseable output.
        """
        async with self._show_connection() as connection:
            result = await connection.query("SHOW DATABASES")
        return tuple(DatabaseRow.from_record(record) for record in result.records())

    async def show_pools(self) -> tuple[PoolRow, ...]:
        """Return SHOW POOLS as typed rows.

        Raises:
            PgBouncerUnreachable: No admin connection.
            PgBouncerProtocolError: Unparseable output.
        """
        async with self._show_connection() as connection:
            result = await connection.query("SHOW POOLS")
        return tuple(PoolRow.from_record(record) for record in result.records())

    async def show_state(self) -> PgBouncerState:
        """Return the pause state: SHOW STATE where supported (1.21+), plus SHOW DATABASES.

        Raises:
            PgBouncerUnreachable: No admin connection.
            PgBouncerProtocolError: Unparseable output.
        """
        async with self._show_connection() as connection:
            try:
                state = await connection.query("SHOW STATE")
            except PgBouncerCommandRefused as exc:
                if not _UNKNOWN_COMMAND.search(exc.server_message):
                    raise
                state_records = None
            else:
                state_records = state.records()
            databases = await connection.query("SHOW DATABASES")
        rows = tuple(DatabaseRow.from_record(record) for record in databases.records())
        return PgBouncerState.from_show(state_records, rows)

    async def show_version(self) -> PgBouncerVersion:
        """Return the version PgBouncer reports.

        Raises:
            PgBouncerUnreachable: No admin connection.
            PgBouncerProtocolError: Unparseable output.
        """
        async with self._show_connection() as connection:
            result = await connection.query("SHOW VERSION")
        # Before 1.12 the version came as a NOTICE rather than a row.
        texts = [value for row in result.rows for value in row if value] + list(result.notices)
        return PgBouncerVersion.parse(texts[0] if texts else "")
