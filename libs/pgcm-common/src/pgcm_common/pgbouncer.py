"""PgBouncer admin console: settings, clients, their Protocol seam, typed SHOW rows and errors.

Both clients speak the simple query protocol through ``_pgwire/wire.py`` (ADR 0005):
importing this module loads no PostgreSQL driver.
"""

from __future__ import annotations

from pgcm_common._pgbouncer.admin import PgBouncerAdmin, PgBouncerAdminProtocol, admins_for
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
