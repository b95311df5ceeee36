"""Test kit: a real PgBouncer (1.18 on Debian 12) run as ``postgres`` in the foreground.

The fixture writes a complete ini file, an ``auth_file`` with plain-text passwords (so
PgBouncer can answer md5 and SCRAM-SHA-256 alike) and, for ``auth_type = hba``, an hba
file. Tests that rewrite the ini (the proxy's job) get its path in
:attr:`PgBouncerServer.ini_path`; PgBouncer logs to stderr, captured in ``log_path``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, final

import pytest
from pydantic import SecretStr

from pgcm_common._pgbouncer.errors import PGBOUNCER_ERRORS
from pgcm_common._pgwire.wire import open_simple_query
from pgcm_common.pgbouncer import PgBouncerEndpoint, PgBouncerSettings
from pgcm_testkit.postgres import PostgresServer, as_postgres
from pgcm_testkit.process import (
    POSTGRES_USER,
    ServerProcess,
    chown_to_postgres,
    free_tcp_port,
    make_world_traversable,
    require_binary,
    tcp_port_open,
)

__all__ = [
    "ADMIN_PASSWORD",
    "SCRAM_ADMIN",
    "PgBouncerServer",
    "admin_clients",
    "backend_connstr",
    "pgbouncer",
    "render_ini",
    "start_pgbouncer",
]

AuthType = Literal["trust", "md5", "scram-sha-256", "hba"]
ADMIN_PASSWORD = "postgres-secret"  # noqa: S105 - a throw-away test credential
SCRAM_ADMIN = "pgcm_scram"
_SCRAM_PASSWORD = "scram-secret"  # noqa: S105 - a throw-away test credential
# The session fixture exercises every login path: trust over the unix socket, SCRAM for
# one user and md5 for the rest over TCP.
_DEFAULT_HBA = (
    "local all all trust",
    f"host all {SCRAM_ADMIN} 127.0.0.1/32 scram-sha-256",
    "host all all 127.0.0.1/32 md5",
)
_READY_DEADLINE_S = 15


@final
@dataclass(frozen=True, slots=True)
class PgBouncerServer:
    """A running PgBouncer started by the test kit."""

    port: int
    socket_dir: Path
    ini_path: Path
    log_path: Path
    auth_file: Path
    process: ServerProcess
    users: Mapping[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"

    def endpoint(self, *, via: Literal["tcp", "unix"] = "tcp") -> PgBouncerEndpoint:
        """Return the admin endpoint over TCP or the unix socket."""
        host = str(self.socket_dir) if via == "unix" else self.host
        return PgBouncerEndpoint(host=host, port=self.port)

    def admin_settings(
        self, *, via: Literal["tcp", "unix"] = "tcp", user: str = POSTGRES_USER
    ) -> PgBouncerSettings:
        """Return admin console settings for ``user`` (password from the auth file)."""
        endpoint = self.endpoint(via=via)
        password = self.users.get(user)
        return PgBouncerSettings(
            host=endpoint.host,
            port=endpoint.port,
            user=user,
            password=None if password is None else SecretStr(password),
        )

    def client_dsn(self, database: str, *, user: str = POSTGRES_USER) -> str:
        """Return a URI for an application client connecting through PgBouncer over TCP."""
        password = self.users.get(user, "")
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{database}"


async def admin_clients(settings: PgBouncerSettings) -> int:
    """Count the clients of PgBouncer's admin database, not counting the one asking.

    Tests use it to see whether an admin connection is kept open or closed.
    """
    password = settings.password
    async with open_simple_query(
        settings.endpoints[0],
        user=settings.user,
        password=None if password is None else password.get_secret_value(),
        database=settings.database,
        connect_timeout=settings.connect_timeout,
        errors=PGBOUNCER_ERRORS,
    ) as probe:
        clients = (await probe.query("SHOW CLIENTS")).records()
    return sum(1 for client in clients if client["database"] == "pgbouncer") - 1


def backend_connstr(server: PostgresServer, dbname: str | None = None) -> str:
    """Return a ``[databases]`` entry routing to ``server`` over TCP."""
    return f"host={server.host} port={server.port} dbname={dbname or server.database}"


def render_ini(
    *,
    port: int,
    socket_dir: Path,
    auth_file: Path,
    databases: Mapping[str, str],
    auth_type: AuthType,
    hba_file: Path | None,
    admin_users: Sequence[str],
    pool_mode: str,
    extra_settings: Mapping[str, str],
) -> str:
    """Return the text of a pgbouncer.ini for the test kit."""
    lines = ["[databases]", *(f"{name} = {conn}" for name, conn in databases.items()), ""]
    settings = {
        "listen_addr": "127.0.0.1",
        "listen_port": str(port),
        "unix_socket_dir": str(socket_dir),
        "auth_type": auth_type,
        "auth_file": str(auth_file),
        "admin_users": ",".join(admin_users),
        "pool_mode": pool_mode,
        # A paused or broken backend must not make a test wait for PgBouncer's defaults.
        "server_login_retry": "1",
        "server_connect_timeout": "3",
        "query_wait_timeout": "30",
        # asyncpg and psql send these; without them PgBouncer closes the connection.
        "ignore_startup_parameters": "extra_float_digits,options",
        **({"auth_hba_file": str(hba_file)} if hba_file is not None else {}),
        **extra_settings,
    }
    lines += ["[pgbouncer]", *(f"{key} = {value}" for key, value in settings.items()), ""]
    return "\n".join(lines)


@contextlib.contextmanager
def start_pgbouncer(
    base: Path,
    *,
    databases: Mapping[str, str],
    port: int | None = None,
    auth_type: AuthType = "md5",
    users: Mapping[str, str] | None = None,
    admin_users: Sequence[str] = (POSTGRES_USER,),
    hba_lines: Sequence[str] = _DEFAULT_HBA,
    pool_mode: str = "transaction",
    extra_settings: Mapping[str, str] | None = None,
) -> Iterator[PgBouncerServer]:
    """Write a config into ``base``, start PgBouncer as ``postgres``, stop it by PID afterwards.

    Args:
        base: An empty directory for the ini, auth/hba files, socket and log.
        databases: ``[databases]`` entries, e.g. ``{"app": backend_connstr(primary)}``.
        port: TCP port on 127.0.0.1 (default: a free one); also the unix socket's port.
        auth_type: ``trust``, ``md5``, ``scram-sha-256`` or ``hba`` (uses ``hba_lines``).
        users: ``user -> plain-text password`` for the auth file.
        admin_users: Users allowed to run admin commands.
        hba_lines: The hba file for ``auth_type="hba"``.
        pool_mode: ``session``, ``transaction`` or ``statement``.
        extra_settings: More ``[pgbouncer]`` settings, overriding the defaults.
    """
    make_world_traversable(base)
    port = port or free_tcp_port()
    users = users if users is not None else {POSTGRES_USER: ADMIN_PASSWORD}
    socket_dir = base / "sockets"
    socket_dir.mkdir(exist_ok=True)
    auth_file = base / "userlist.txt"
    auth_file.write_text("".join(f'"{user}" "{password}"\n' for user, password in users.items()))
    hba_file: Path | None = None
    if auth_type == "hba":
        hba_file = base / "pgbouncer_hba.conf"
        hba_file.write_text("\n".join(hba_lines) + "\n")
    ini_path = base / "pgbouncer.ini"
    ini_path.write_text(
        render_ini(
            port=port,
            socket_dir=socket_dir,
            auth_file=auth_file,
            databases=databases,
            auth_type=auth_type,
            hba_file=hba_file,
            admin_users=admin_users,
            pool_mode=pool_mode,
            extra_settings=extra_settings or {},
        )
    )
    chown_to_postgres(base)
    log_path = base / "pgbouncer.log"
    process = ServerProcess(
        name="pgbouncer",
        argv=as_postgres([require_binary("pgbouncer"), str(ini_path)]),
        log_path=log_path,
        cwd=base,
    )
    try:
        process.start()
        process.wait_ready(lambda: tcp_port_open(port), deadline_s=_READY_DEADLINE_S)
        yield PgBouncerServer(
            port=port,
            socket_dir=socket_dir,
            ini_path=ini_path,
            log_path=log_path,
            auth_file=auth_file,
            process=process,
            users=dict(users),
        )
    finally:
        process.stop()


@pytest.fixture(scope="session")
def pgbouncer(
    postgres_primary: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PgBouncerServer]:
    """A transaction-pooling PgBouncer routing database ``app`` to the session primary.

    Logins: trust over the unix socket; over TCP md5 for ``postgres`` and SCRAM-SHA-256
    for ``pgcm_scram``; both are admin users.
    """
    with start_pgbouncer(
        tmp_path_factory.mktemp("pgbouncer"),
        databases={"app": backend_connstr(postgres_primary)},
        auth_type="hba",
        users={POSTGRES_USER: ADMIN_PASSWORD, SCRAM_ADMIN: _SCRAM_PASSWORD},
        admin_users=(POSTGRES_USER, SCRAM_ADMIN),
    ) as server:
        yield server
