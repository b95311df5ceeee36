"""A small PostgreSQL client: libpq connection strings, simple queries, typed errors.

It runs on the same simple-query wire client as the PgBouncer admin console
(``_pgwire``, ADR 0005) and is meant for a few short statements whose text results
the caller converts itself (pgcm-supervise's local PostgreSQL facts): importing it loads
no PostgreSQL driver.
"""

from __future__ import annotations

import getpass
import ssl
import stat
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import final

import anyio

from pgcm_common._pgwire.dsn import Endpoint, PostgresDsn, parse_dsn
from pgcm_common._pgwire.wire import (
    SimpleQueryConnection,
    SimpleQueryResult,
    TlsPolicy,
    WireErrors,
    close_quietly,
    connect_simple_query,
)
from pgcm_common.errors import PostgresError

__all__ = [
    "INSUFFICIENT_PRIVILEGE",
    "PostgresAuthError",
    "PostgresConnector",
    "PostgresDsn",
    "PostgresError",
    "PostgresProtocolError",
    "PostgresQueryError",
    "PostgresUnreachable",
    "SimpleQueryConnection",
    "SimpleQueryResult",
    "close_quietly",
    "parse_dsn",
    "tls_policy",
]

INSUFFICIENT_PRIVILEGE = "42501"


class PostgresUnreachable(PostgresError):
    """No connection could be made (refused, timed out, dropped, TLS declined or failed)."""


class PostgresAuthError(PostgresError):
    """PostgreSQL refused the login, or it needs a password or method we do not have."""


class PostgresQueryError(PostgresError):
    """PostgreSQL answered a statement with an error.

    Attributes:
        statement: The statement we sent.
        sqlstate: PostgreSQL's error code, e.g. ``42501`` (insufficient privilege).
        server_message: PostgreSQL's own message.
    """

    def __init__(self, statement: str, sqlstate: str, server_message: str) -> None:
        self.statement = statement
        self.sqlstate = sqlstate
        self.server_message = server_message
        super().__init__(f"{server_message} ({sqlstate})")


class PostgresProtocolError(PostgresError):
    """PostgreSQL sent something we could not parse."""


_ERRORS = WireErrors(
    unreachable=PostgresUnreachable,
    auth=PostgresAuthError,
    protocol=PostgresProtocolError,
    refused=PostgresQueryError,
)


@final
class PostgresConnector:
    """Opens logged-in connections to the PostgreSQL a connection string names.

    The TLS context is built at the first connection that needs one (reading the
    certificate files once) and kept; a password file is read at each connection, in a
    worker thread, as libpq reads it at each connect.
    """

    def __init__(self, dsn: PostgresDsn, *, connect_timeout: timedelta) -> None:
        self._dsn = dsn
        bound = connect_timeout.total_seconds()
        if dsn.connect_timeout is not None:
            bound = min(bound, dsn.connect_timeout)
        self._timeout_s = bound
        self._tls: TlsPolicy | None = None

    async def connect(self) -> SimpleQueryConnection:
        """Connect to the first endpoint that answers and log in.

        Every endpoint is tried in turn (several only when the string names no host);
        connecting and logging in are bounded as a whole by the connect timeout.

        Raises:
            PostgresUnreachable: no endpoint answered (the message names each one).
            PostgresAuthError: the login was refused.
        """
        dsn = self._dsn
        user = dsn.user or getpass.getuser()
        database = dsn.dbname or user
        tls = self._tls_policy()
        deadline = time.monotonic() + self._timeout_s
        failures: list[str] = []
        for endpoint in dsn.endpoints:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                failures.append(f"no time left for {_describe(endpoint)}")
                break
            password = dsn.password
            if password is None and dsn.passfile is not None:
                password = await anyio.to_thread.run_sync(
                    _password_from_file, Path(dsn.passfile), endpoint, database, user
                )
            try:
                return await connect_simple_query(
                    endpoint,
                    user=user,
                    password=password,
                    database=database,
                    connect_timeout=timedelta(seconds=remaining),
                    errors=_ERRORS,
                    tls=tls,
                    parameters=dsn.parameters,
                )
            except PostgresUnreachable as exc:
                failures.append(str(exc))
        raise PostgresUnreachable("; ".join(failures))

    def _tls_policy(self) -> TlsPolicy | None:
        if self._tls is None and self._dsn.sslmode != "disable":
            self._tls = tls_policy(self._dsn)
        return self._tls


def _describe(endpoint: Endpoint) -> str:
    return endpoint.unix_socket_path if endpoint.is_unix_socket else endpoint.host


def tls_policy(dsn: PostgresDsn) -> TlsPolicy | None:
    """Return how ``dsn``'s ``sslmode`` asks for TLS, as libpq reads it.

    ``prefer`` and ``require`` encrypt without checking the server, unless
    ``sslrootcert`` is given (then ``require`` checks the chain, as libpq does);
    ``verify-ca`` checks the chain against ``sslrootcert`` (default
    ``~/.postgresql/root.crt``; ``system``: the system's store), ``verify-full`` also
    the host name.

    Raises:
        PostgresUnreachable: a certificate or key file cannot be read or used.
    """
    mode = dsn.sslmode
    if mode == "disable":
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    verify = mode in {"verify-ca", "verify-full"} or (
        mode == "require" and dsn.sslrootcert is not None
    )
    context.check_hostname = mode == "verify-full"
    try:
        if verify:
            root = dsn.sslrootcert or str(Path.home() / ".postgresql" / "root.crt")
            if root == "system":
                context.load_default_certs(ssl.Purpose.SERVER_AUTH)
            else:
                context.load_verify_locations(cafile=root)
            context.verify_mode = ssl.CERT_REQUIRED
        else:
            context.verify_mode = ssl.CERT_NONE
        if dsn.sslcert is not None:
            context.load_cert_chain(dsn.sslcert, dsn.sslkey)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise PostgresUnreachable(f"cannot set up TLS (sslmode={mode}): {exc}") from exc
    return TlsPolicy(context=context, required=mode != "prefer")


@dataclass(frozen=True, slots=True)
class _PassEntry:
    fields: tuple[str, str, str, str]
    password: str

    def matches(self, wanted: tuple[str, str, str, str]) -> bool:
        return all(f in {"*", w} for f, w in zip(self.fields, wanted, strict=True))


def _password_from_file(path: Path, endpoint: Endpoint, database: str, user: str) -> str | None:
    """Return the password a ``.pgpass``-format file holds for this connection, if any.

    As libpq: a missing file is no password; a unix socket connection matches the host
    ``localhost`` (and its directory); a file others may read is refused.

    Raises:
        PostgresAuthError: the file is readable by group or others, or unreadable.
    """
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise PostgresAuthError(f"password file {str(path)!r} is not a regular file")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PostgresAuthError(
                f"password file {str(path)!r} is readable by group or others (chmod 0600)"
            )
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise PostgresAuthError(f"cannot read password file {str(path)!r}: {exc}") from exc
    hosts = ("localhost", endpoint.host) if endpoint.is_unix_socket else (endpoint.host,)
    for line in lines:
        entry = _pass_entry(line)
        if entry is None:
            continue
        for host in hosts:
            if entry.matches((host, str(endpoint.port), database, user)):
                return entry.password
    return None


def _pass_entry(line: str) -> _PassEntry | None:
    """Split one ``host:port:database:user:password`` line (backslash escapes ``:``)."""
    if not line.strip() or line.lstrip().startswith("#"):
        return None
    fields: list[str] = []
    current: list[str] = []
    chars = iter(line)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":" and len(fields) < 4:  # noqa: PLR2004 - the password may hold ':'
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    if len(fields) != 4:  # noqa: PLR2004 - host, port, database, user
        return None
    return _PassEntry((fields[0], fields[1], fields[2], fields[3]), "".join(current))
