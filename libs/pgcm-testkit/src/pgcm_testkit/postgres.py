"""Test kit: real PostgreSQL 15 servers, a primary and a streaming standby, run as ``postgres``.

Servers listen on 127.0.0.1 with free ports and keep their unix sockets in their own
temp directory. Each carries ``cluster_name`` (its name) so a test can ask any
connection which server it reached (``SHOW cluster_name``); the standby's walreceiver
uses the same name as ``application_name`` in ``pg_stat_replication``.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import final

import pytest

from pgcm_testkit.process import (
    POSTGRES_USER,
    ServerProcess,
    chown_to_postgres,
    free_tcp_port,
    make_world_traversable,
    require_binary,
    run_checked,
)

__all__ = [
    "PostgresPair",
    "PostgresServer",
    "postgres_pair",
    "postgres_primary",
    "start_postgres",
    "start_standby",
]

# Settings for a fast, throw-away server: fsync off (tests never survive a host crash),
# replication on so a standby can stream, and short timeouts so a broken test fails fast.
_BASE_SETTINGS: Mapping[str, str] = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "replica",
    "max_wal_senders": "5",
    "hot_standby": "on",
    "wal_receiver_timeout": "5s",
    "wal_retrieve_retry_interval": "1s",
    "max_connections": "40",
    "shared_buffers": "16MB",
    "logging_collector": "off",
}
_READY_DEADLINE_S = 30


def as_postgres(argv: Sequence[str]) -> list[str]:
    """Return ``argv`` run as ``postgres`` with postgres's own groups.

    ``subprocess``'s ``user=`` (used by ``process.py``) changes only the uid: the child
    keeps gid 0 and root's groups, and root-owned 0705 temp dirs deny it by their group
    bits. ``setpriv`` switches uid, gid and groups, then execs the command, so the PID
    we own is still the server's.
    """
    setpriv = require_binary("setpriv")
    return [
        setpriv,
        f"--reuid={POSTGRES_USER}",
        f"--regid={POSTGRES_USER}",
        "--init-groups",
        "--",
        *argv,
    ]


@final
@dataclass(frozen=True, slots=True)
class PostgresServer:
    """A running PostgreSQL server started by the test kit."""

    name: str
    port: int
    data_dir: Path
    socket_dir: Path
    log_path: Path
    process: ServerProcess
    host: str = "127.0.0.1"
    user: str = POSTGRES_USER
    database: str = "postgres"

    @property
    def dsn(self) -> str:
        """Return a libpq URI for TCP connections as the superuser (trust auth)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"


@final
@dataclass(frozen=True, slots=True)
class PostgresPair:
    """A primary and a standby streaming from it."""

    primary: PostgresServer
    standby: PostgresServer


def _argv(
    data_dir: Path, socket_dir: Path, port: int, name: str, extra: Mapping[str, str]
) -> list[str]:
    settings = {
        **_BASE_SETTINGS,
        "port": str(port),
        "unix_socket_directories": str(socket_dir),
        "cluster_name": name,
        **extra,
    }
    argv = [require_binary("postgres"), "-D", str(data_dir)]
    for key, value in settings.items():
        argv += ["-c", f"{key}={value}"]
    return argv


def _is_ready(port: int) -> Callable[[], bool]:
    pg_isready = require_binary("pg_isready")

    def ready() -> bool:
        result = subprocess.run(
            [pg_isready, "-q", "-h", "127.0.0.1", "-p", str(port), "-t", "1"],
            check=False,
            timeout=5,
        )
        return result.returncode == 0

    return ready


@contextlib.contextmanager
def _serve(
    name: str, base: Path, data_dir: Path, port: int, extra: Mapping[str, str]
) -> Iterator[PostgresServer]:
    socket_dir = base / "sockets"
    socket_dir.mkdir(exist_ok=True)
    chown_to_postgres(socket_dir)
    log_path = base / f"{name}.log"
    process = ServerProcess(
        name=f"postgres {name}",
        argv=as_postgres(_argv(data_dir, socket_dir, port, name, extra)),
        log_path=log_path,
        cwd=base,
        # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM ("smart") would wait for every
        # client a failed test left connected.
        stop_signal=signal.SIGINT,
    )
    try:
        process.start()
        process.wait_ready(_is_ready(port), deadline_s=_READY_DEADLINE_S)
        yield PostgresServer(
            name=name,
            port=port,
            data_dir=data_dir,
            socket_dir=socket_dir,
            log_path=log_path,
            process=process,
        )
    finally:
        process.stop()


@contextlib.contextmanager
def start_postgres(
    base: Path,
    *,
    port: int | None = None,
    name: str = "primary",
    extra_settings: Mapping[str, str] | None = None,
) -> Iterator[PostgresServer]:
    """Run ``initdb`` in ``base`` and start a primary; stop it by PID afterwards.

    Authentication is ``trust`` for local, loopback and replication connections.

    Args:
        base: An empty directory for data, sockets and the log.
        port: TCP port on 127.0.0.1 (default: a free one).
        name: ``cluster_name``; also names the log file.
        extra_settings: More ``-c`` settings, overriding the defaults.
    """
    make_world_traversable(base)
    chown_to_postgres(base)
    data_dir = base / "data"
    run_checked(
        as_postgres(
            [
                require_binary("initdb"),
                "-D",
                str(data_dir),
                "-U",
                POSTGRES_USER,
                "--auth=trust",
                "--no-sync",
                "--no-instructions",
                "-E",
                "UTF8",
                "--locale=C",
            ]
        ),
    )
    with _serve(name, base, data_dir, port or free_tcp_port(), extra_settings or {}) as server:
        yield server


@contextlib.contextmanager
def start_standby(
    primary: PostgresServer,
    base: Path,
    *,
    port: int | None = None,
    name: str = "standby",
    extra_settings: Mapping[str, str] | None = None,
) -> Iterator[PostgresServer]:
    """Clone ``primary`` with ``pg_basebackup -R`` into ``base`` and start it streaming.

    The walreceiver reports ``name`` (the standby's ``cluster_name``) as its
    ``application_name``, so ``pg_stat_replication`` on the primary shows it by name.
    """
    make_world_traversable(base)
    chown_to_postgres(base)
    data_dir = base / "data"
    run_checked(
        as_postgres(
            [
                require_binary("pg_basebackup"),
                "-h",
                primary.host,
                "-p",
                str(primary.port),
                "-U",
                primary.user,
                "-D",
                str(data_dir),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ]
        ),
    )
    with _serve(name, base, data_dir, port or free_tcp_port(), extra_settings or {}) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_primary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL 15 primary shared by the whole session."""
    with start_postgres(tmp_path_factory.mktemp("pg-primary"), name="primary") as server:
        yield server


@pytest.fixture(scope="session")
def postgres_pair(
    postgres_primary: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PostgresPair]:
    """The session primary plus a standby streaming from it."""
    with start_standby(postgres_primary, tmp_path_factory.mktemp("pg-standby")) as standby:
        yield PostgresPair(primary=postgres_primary, standby=standby)
