"""Where a PostgreSQL-protocol server listens, read the way libpq reads it."""

from __future__ import annotations

__all__ = ["ServerAddress"]


class ServerAddress:
    """``host`` and ``port``; a ``host`` starting with ``/`` is a unix socket directory.

    A mixin for the address types (the PgBouncer endpoint setting, a parsed DSN's
    endpoint), so that they derive the socket file one way.
    """

    __slots__ = ()

    host: str
    port: int

    @property
    def is_unix_socket(self) -> bool:
        """Return whether ``host`` is a unix socket directory."""
        return self.host.startswith("/")

    @property
    def unix_socket_path(self) -> str:
        """Return the socket file PostgreSQL clients derive: ``<host>/.s.PGSQL.<port>``."""
        return f"{self.host}/.s.PGSQL.{self.port}"
