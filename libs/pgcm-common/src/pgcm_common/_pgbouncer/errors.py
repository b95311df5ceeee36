"""Errors raised by the PgBouncer admin console client."""

from __future__ import annotations

from pgcm_common._pgwire.wire import WireErrors
from pgcm_common.errors import PgBouncerError

__all__ = [
    "PGBOUNCER_ERRORS",
    "PgBouncerAuthError",
    "PgBouncerCommandRefused",
    "PgBouncerProtocolError",
    "PgBouncerUnreachable",
]


class PgBouncerUnreachable(PgBouncerError):
    """No connection to the admin console could be made (refused, timed out, dropped)."""


class PgBouncerAuthError(PgBouncerError):
    """The admin console rejected our credentials or asked for an unsupported method."""


class PgBouncerCommandRefused(PgBouncerError):
    """The admin console answered a command with an error.

    Attributes:
        command: The command we sent, e.g. ``"PAUSE"``.
        sqlstate: The SQLSTATE PgBouncer reported (it uses ``08P01`` for most refusals).
        server_message: PgBouncer's own message, e.g. ``"no such database: app"``.
    """

    def __init__(self, command: str, sqlstate: str, server_message: str) -> None:
        self.command = command
        self.sqlstate = sqlstate
        self.server_message = server_message
        super().__init__(f"PgBouncer refused {command!r}: {server_message} ({sqlstate})")


class PgBouncerProtocolError(PgBouncerError):
    """The admin console sent something we could not parse."""


# What the shared wire client raises when it talks to the admin console.
PGBOUNCER_ERRORS = WireErrors(
    unreachable=PgBouncerUnreachable,
    auth=PgBouncerAuthError,
    protocol=PgBouncerProtocolError,
    refused=PgBouncerCommandRefused,
)
