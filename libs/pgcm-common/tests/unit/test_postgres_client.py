"""pgcm's PostgreSQL client without a server: password files, TLS set-up, SSLRequest."""

from __future__ import annotations

import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketStream

from pgcm_common._pgwire.dsn import Endpoint
from pgcm_common.postgres import (
    PostgresAuthError,
    PostgresConnector,
    PostgresUnreachable,
    parse_dsn,
    tls_policy,
)
from pgcm_common.postgres import _password_from_file as password_from_file

SOCKET = Endpoint("/run/postgresql", 5432)
TCP = Endpoint("127.0.0.1", 5433)


def _passfile(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "pgpass"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_password_file_first_matching_line_wins(tmp_path: Path) -> None:
    path = _passfile(
        tmp_path,
        "# comment\n"
        "otherhost:*:*:*:no\n"
        "127.0.0.1:5433:postgres:probe:p\\:w\\\\d:tail\n"
        "*:*:*:*:fallback\n",
    )
    assert password_from_file(path, TCP, "postgres", "probe") == "p:w\\d:tail"
    assert password_from_file(path, TCP, "other", "probe") == "fallback"


def test_password_file_matches_localhost_for_a_unix_socket(tmp_path: Path) -> None:
    path = _passfile(tmp_path, "localhost:5432:*:probe:local\n")
    assert password_from_file(path, SOCKET, "postgres", "probe") == "local"
    assert password_from_file(path, TCP, "postgres", "probe") is None


def test_missing_password_file_is_no_password(tmp_path: Path) -> None:
    assert password_from_file(tmp_path / "absent", TCP, "postgres", "probe") is None


def test_password_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = _passfile(tmp_path, "*:*:*:*:secret\n", mode=0o644)
    with pytest.raises(PostgresAuthError, match="chmod 0600"):
        password_from_file(path, TCP, "postgres", "probe")


def test_tls_policy_per_sslmode(tmp_path: Path) -> None:
    assert tls_policy(parse_dsn("host=h")) is None
    prefer = tls_policy(parse_dsn("host=h sslmode=prefer"))
    assert prefer is not None
    assert not prefer.required
    assert prefer.context.verify_mode == ssl.CERT_NONE
    require = tls_policy(parse_dsn("host=h sslmode=require"))
    assert require is not None
    assert require.required
    assert require.context.verify_mode == ssl.CERT_NONE
    full = tls_policy(parse_dsn("host=h sslmode=verify-full sslrootcert=system"))
    assert full is not None
    assert full.context.verify_mode == ssl.CERT_REQUIRED
    assert full.context.check_hostname
    with pytest.raises(PostgresUnreachable, match="sslmode=verify-ca"):
        tls_policy(parse_dsn(f"host=h sslmode=verify-ca sslrootcert={tmp_path / 'none.crt'}"))


@asynccontextmanager
async def _server_answering_ssl_request(answer: bytes) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A TCP listener that reads the SSLRequest, answers ``answer`` and records the rest."""
    received: list[bytes] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")

    async def handle(client: SocketStream) -> None:
        async with client:
            received.append(await client.receive(8))
            await client.send(answer)
            try:
                received.append(await client.receive())
            except anyio.EndOfStream:
                return

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 - anyio, not Django
        yield port, received
        tg.cancel_scope.cancel()


async def test_require_refuses_a_server_that_declines_tls() -> None:
    async with _server_answering_ssl_request(b"N") as (port, received):
        connector = PostgresConnector(
            parse_dsn(f"host=127.0.0.1 port={port} user=u sslmode=require"),
            connect_timeout=timedelta(seconds=5),
        )
        with anyio.fail_after(10), pytest.raises(PostgresUnreachable, match="does not accept TLS"):
            await connector.connect()
    assert received[0] == struct.pack("!ii", 8, 80877103)


async def test_prefer_goes_on_in_plaintext_when_tls_is_declined() -> None:
    async with _server_answering_ssl_request(b"N") as (port, received):
        connector = PostgresConnector(
            parse_dsn(f"host=127.0.0.1 port={port} user=probe dbname=postgres sslmode=prefer"),
            connect_timeout=timedelta(seconds=5),
        )
        # The fake server closes after the startup message: the login cannot finish.
        with anyio.fail_after(10), pytest.raises(PostgresUnreachable):
            await connector.connect()
    assert received[0] == struct.pack("!ii", 8, 80877103)
    startup = received[1]
    assert b"user\0probe\0database\0postgres\0" in startup


async def test_no_endpoint_answering_names_each_one() -> None:
    connector = PostgresConnector(parse_dsn("port=1"), connect_timeout=timedelta(seconds=5))
    with anyio.fail_after(20), pytest.raises(PostgresUnreachable) as caught:
        await connector.connect()
    assert "/run/postgresql/.s.PGSQL.1" in str(caught.value)
    assert "localhost:1" in str(caught.value)
