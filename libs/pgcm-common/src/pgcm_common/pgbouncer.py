"""PgBouncer admin console: settings, clients, their Protocol seam, typed SHOW rows and errors.

:class:`PgBouncerAdmin` (and its Protocol, :func:`admins_for`) are loaded on first use:
they need asyncpg, which pgcm-proxy, a user of :class:`RoutingConsole` only, would
otherwise keep in memory on every application node without ever calling it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgcm_common._pgbouncer.console import RoutingConsole, routing_consoles_for
from pgcm_common._pgbouncer.errors import (
    PgBouncerAuthError,
    PgBouncerCommandRefused,
    PgBouncerProtocolError,
    PgBouncerUnreachable,
)
from pgcm_common._pgbouncer.rows import DatabaseRow, PgBouncerState, PgBouncerVersion, PoolRow
from pgcm_common._pgbouncer.settings import PgBouncerEndpoint, PgBouncerSettings
from pgcm_common.errors import PgBouncerError

if TYPE_CHECKING:
    from pgcm_common._pgbouncer.admin import PgBouncerAdmin, PgBouncerAdminProtocol, admins_for

__all__ = [
    "DatabaseRow",
    "PgBouncerAdmin",
    "PgBouncerAdminProtocol",
    "PgBouncerAuthError",
    "PgBouncerCommandRefused",
    "PgBouncerEndpoint",
    "PgBouncerError",
    "PgBouncerProtocolError",
    "PgBouncerSettings",
    "PgBouncerState",
    "PgBouncerUnreachable",
    "PgBouncerVersion",
    "PoolRow",
    "RoutingConsole",
    "admins_for",
    "routing_consoles_for",
]


_ADMIN_NAMES = frozenset({"PgBouncerAdmin", "PgBouncerAdminProtocol", "admins_for"})


def __getattr__(name: str) -> object:
    """Import the asyncpg-based admin client when one of its names is first asked for."""
    if name not in _ADMIN_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from pgcm_common._pgbouncer import admin  # noqa: PLC0415 - the point: only when used

    value: object = getattr(admin, name)
    globals()[name] = value  # later look-ups skip this function
    return value
