"""Settings for reaching one or more PgBouncer admin consoles."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, ClassVar, final

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from pgcm_common._pgwire.address import ServerAddress
from pgcm_common.settings import PositiveDuration

__all__ = ["PgBouncerEndpoint", "PgBouncerSettings"]

Port = Annotated[int, Field(ge=1, le=65535)]
# PgBouncer's admin console is deliberately reached over its unix socket by default (as
# the original did): it needs no password for the ``pgbouncer`` user from the same UID.
DEFAULT_SOCKET_DIR = "/var/run/postgresql"
DEFAULT_PORT = 6432


@final
class PgBouncerEndpoint(BaseModel, ServerAddress):
    """Where one PgBouncer process listens.

    ``host`` starting with ``/`` is a unix socket directory (the socket is
    ``<host>/.s.PGSQL.<port>``); anything else is a TCP host name or address.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(default=DEFAULT_SOCKET_DIR, min_length=1)
    port: Port = DEFAULT_PORT

    def __str__(self) -> str:
        return self.unix_socket_path if self.is_unix_socket else f"{self.host}:{self.port}"


@final
class PgBouncerSettings(BaseModel):
    """How to log in to the admin console of the local PgBouncer(s).

    ``host``/``port`` are the original's ``pgbouncer-socket-dir``/``pgbouncer-port``.
    Several PgBouncer processes sharing a TCP port with ``so_reuseport`` cannot be told
    apart over TCP, so each one is listed by its own unix socket directory in
    ``extra_endpoints``; every admin operation is then run against all of ``endpoints``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The original's flag names of these settings (the [pgbouncer] table of every service).
    original_keys: ClassVar[Mapping[str, str]] = {
        "pgbouncer-user": "user",
        "pgbouncer-password": "password",
        "pgbouncer-database": "database",
        "pgbouncer-socket-dir": "host",
        "pgbouncer-port": "port",
        "pgbouncer-timeout": "connect_timeout",
    }

    host: str = Field(default=DEFAULT_SOCKET_DIR, min_length=1)
    port: Port = DEFAULT_PORT
    extra_endpoints: tuple[PgBouncerEndpoint, ...] = ()
    user: str = Field(default="pgbouncer", min_length=1)
    password: SecretStr | None = None
    database: str = Field(default="pgbouncer", min_length=1)
    connect_timeout: PositiveDuration = timedelta(seconds=5)
    # Bounds the shielded RESUME sent after an abandoned PAUSE: it starts when
    # the cleanup starts, independent of the caller's deadline that just expired.
    cleanup_timeout: PositiveDuration = timedelta(seconds=5)

    @model_validator(mode="after")
    def _endpoints_are_unique(self) -> PgBouncerSettings:
        seen = [str(endpoint) for endpoint in self.endpoints]
        if len(seen) != len(set(seen)):
            raise ValueError(f"PgBouncer endpoints listed twice: {seen}")
        return self

    @property
    def endpoints(self) -> tuple[PgBouncerEndpoint, ...]:
        """Return every admin endpoint: the primary one first."""
        return (PgBouncerEndpoint(host=self.host, port=self.port), *self.extra_endpoints)
