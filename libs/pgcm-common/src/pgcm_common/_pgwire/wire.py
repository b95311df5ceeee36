"""A minimal PostgreSQL simple-query client: pgcm's one PostgreSQL protocol stack.

PgBouncer's admin console speaks only the simple query protocol (ADR 0003), and the
facts pgcm-supervise reads from its local PostgreSQL are a handful of one-row
statements, so this is all pgcm needs (ADR 0005): an optional SSLRequest and TLS
handshake, the startup message, trust / cleartext / md5 / SCRAM-SHA-256
authentication, and one ``Query`` message at a time whose text-format rows are
returned as strings.

Each caller names the exceptions it wants for each kind of failure (:class:`WireErrors`):
the admin console client raises its ``PgBouncer*`` errors, the PostgreSQL client its
``Postgres*`` ones, from the same code.

Nothing else of the protocol is implemented: no extended protocol, no COPY, no
channel binding.
"""

from __future__ import annotations

import contextlib
import hashlib
import ssl
import struct
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol, final

import anyio
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.tls import TLSStream

from pgcm_common._pgwire.scram import MECHANISM, ScramClient, ScramError

__all__ = [
    "Address",
    "SimpleQueryConnection",
    "SimpleQueryResult",
    "TlsPolicy",
    "WireErrors",
    "close_quietly",
    "connect_simple_query",
    "open_simple_query",
]

_PROTOCOL_VERSION_3 = 196608
_SSL_REQUEST = 80877103
_HEADER = struct.Struct("!cI")
_INT32 = struct.Struct("!i")
_INT16 = struct.Struct("!h")
# A row of SHOW output is small; this only stops a corrupt length from allocating GBs.
_MAX_MESSAGE = 16 * 1024 * 1024
_NULL_LENGTH = -1

_AUTH_OK = 0
_AUTH_CLEARTEXT = 3
_AUTH_MD5 = 5
_AUTH_SASL = 10
_AUTH_SASL_CONTINUE = 11
_AUTH_SASL_FINAL = 12

_ERRORS_DURING_IO = (
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,  # ssl.SSLError among them
)


class Address(Protocol):
    """Where a server listens: ``host`` starting with ``/`` is a unix socket directory."""

    @property
    def host(self) -> str:
        """Return the host name, address or socket directory."""
        ...

    @property
    def port(self) -> int:
        """Return the TCP port (also part of the unix socket's file name)."""
        ...

    @property
    def is_unix_socket(self) -> bool:
        """Return whether ``host`` is a unix socket directory."""
        ...

    @property
    def unix_socket_path(self) -> str:
        """Return ``<host>/.s.PGSQL.<port>``."""
        ...


@final
@dataclass(frozen=True, slots=True)
class WireErrors:
    """The exceptions a caller wants for each kind of failure.

    Attributes:
        unreachable: no connection, a dropped one, or a refused TLS upgrade; built
            from a message.
        auth: the login was refused or needs an unsupported method; from a message.
        protocol: the server sent something that makes no sense; from a message.
        refused: the server answered a statement with an error; built from the
            statement, the SQLSTATE and the server's message.
    """

    unreachable: Callable[[str], Exception]
    auth: Callable[[str], Exception]
    protocol: Callable[[str], Exception]
    refused: Callable[[str, str, str], Exception]


@final
@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """Whether and how to ask a TCP server for TLS (never used on unix sockets).

    Attributes:
        context: the client context: it decides what is verified.
        required: whether a server that declines TLS is an error (else: plaintext).
    """

    context: ssl.SSLContext
    required: bool


@final
@dataclass(frozen=True, slots=True)
class SimpleQueryResult:
    """What one simple query returned: the tag, column names and text rows."""

    command_tag: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str | None, ...], ...]
    notices: tuple[str, ...] = ()

    def records(self) -> tuple[dict[str, str | None], ...]:
        """Return every row as a column-name -> text mapping."""
        return tuple(dict(zip(self.columns, row, strict=True)) for row in self.rows)


@final
@dataclass(frozen=True, slots=True)
class _ServerNotice:
    severity: str
    sqlstate: str
    message: str
    detail: str

    @classmethod
    def parse(cls, payload: bytes) -> _ServerNotice:
        fields: dict[str, str] = {}
        for item in payload.split(b"\0"):
            if item:
                fields[chr(item[0])] = item[1:].decode(errors="replace")
        return cls(
            severity=fields.get("S", "ERROR"),
            sqlstate=fields.get("C", ""),
            message=fields.get("M", ""),
            detail=fields.get("D", ""),
        )


def _cstring(text: str) -> bytes:
    return text.encode() + b"\0"


def _message(kind: bytes, payload: bytes) -> bytes:
    return kind + _INT32.pack(len(payload) + 4) + payload


def md5_password(user: str, password: str, salt: bytes) -> str:
    """Return PostgreSQL's md5 response: ``md5`` + md5(md5(password + user) + salt)."""
    inner = hashlib.md5((password + user).encode(), usedforsecurity=False).hexdigest()
    outer = hashlib.md5(inner.encode() + salt, usedforsecurity=False).hexdigest()
    return "md5" + outer


def parse_row_description(payload: bytes) -> tuple[str, ...]:
    """Return the column names of a RowDescription payload."""
    (count,) = _INT16.unpack_from(payload, 0)
    offset = 2
    names: list[str] = []
    for _ in range(count):
        end = payload.index(b"\0", offset)
        names.append(payload[offset:end].decode(errors="replace"))
        # Skip table oid, column number, type oid, type size, type modifier, format.
        offset = end + 1 + 18
    return tuple(names)


def parse_data_row(payload: bytes) -> tuple[str | None, ...]:
    """Return the text values of a DataRow payload (``None`` for SQL NULL)."""
    (count,) = _INT16.unpack_from(payload, 0)
    offset = 2
    values: list[str | None] = []
    for _ in range(count):
        (length,) = _INT32.unpack_from(payload, offset)
        offset += 4
        if length == _NULL_LENGTH:
            values.append(None)
            continue
        values.append(payload[offset : offset + length].decode(errors="replace"))
        offset += length
    return tuple(values)


@final
class SimpleQueryConnection:
    """One logged-in connection; send simple queries one at a time."""

    def __init__(self, stream: ByteStream, endpoint: Address, errors: WireErrors) -> None:
        self._stream = stream
        self._reader = BufferedByteReceiveStream(stream)
        self._endpoint = endpoint
        self._errors = errors

    def _where(self) -> str:
        return _describe(self._endpoint)

    async def _send(self, data: bytes) -> None:
        try:
            await self._stream.send(data)
        except _ERRORS_DURING_IO as exc:
            raise self._errors.unreachable(f"lost connection to {self._where()}: {exc!r}") from exc

    async def _receive(self) -> tuple[bytes, bytes]:
        try:
            header = await self._reader.receive_exactly(_HEADER.size)
            kind, length = _HEADER.unpack(header)
            if not 4 <= length <= _MAX_MESSAGE:  # noqa: PLR2004 - the length counts itself
                raise self._errors.protocol(f"bad message length {length} from {self._where()}")
            payload = await self._reader.receive_exactly(length - 4) if length > 4 else b""  # noqa: PLR2004
        except _ERRORS_DURING_IO as exc:
            raise self._errors.unreachable(f"lost connection to {self._where()}: {exc!r}") from exc
        return kind, payload

    async def login(
        self,
        *,
        user: str,
        password: str | None,
        database: str,
        parameters: Mapping[str, str] | None = None,
    ) -> None:
        """Send the startup message and authenticate until ReadyForQuery.

        ``parameters`` are further startup parameters (``application_name``, run-time
        settings such as ``statement_timeout``); ``application_name`` defaults to pgcm.

        Raises:
            errors.auth: Wrong credentials or an unsupported method.
            errors.unreachable: The connection broke.
        """
        startup = {"user": user, "database": database, "application_name": "pgcm"}
        startup |= dict(parameters or {})
        params = b"".join(_cstring(key) + _cstring(value) for key, value in startup.items())
        body = _INT32.pack(_PROTOCOL_VERSION_3) + params + b"\0"
        await self._send(_INT32.pack(len(body) + 4) + body)
        scram: ScramClient | None = None
        while True:
            kind, payload = await self._receive()
            if kind == b"R":
                try:
                    scram = await self._authenticate(payload, user, password, scram)
                except ScramError as exc:
                    raise self._errors.auth(f"{self._where()}: {exc}") from exc
            elif kind == b"E":
                notice = _ServerNotice.parse(payload)
                raise self._errors.auth(
                    f"{self._where()} refused login as {user!r}: {notice.message} "
                    f"({notice.sqlstate})"
                )
            elif kind == b"Z":
                return
            # ParameterStatus, BackendKeyData and notices carry nothing we need.

    async def _authenticate(
        self, payload: bytes, user: str, password: str | None, scram: ScramClient | None
    ) -> ScramClient | None:
        (code,) = _INT32.unpack_from(payload, 0)
        if code == _AUTH_OK:
            return scram
        if password is None:
            raise self._errors.auth(f"{self._where()} asks for a password and none is set")
        if code == _AUTH_CLEARTEXT:
            await self._send(_message(b"p", _cstring(password)))
        elif code == _AUTH_MD5:
            await self._send(_message(b"p", _cstring(md5_password(user, password, payload[4:8]))))
        elif code == _AUTH_SASL:
            mechanisms = [m.decode() for m in payload[4:].split(b"\0") if m]
            if MECHANISM not in mechanisms:
                raise self._errors.auth(f"no supported SASL mechanism in {mechanisms}")
            scram = ScramClient(password)
            first = scram.client_first()
            await self._send(_message(b"p", _cstring(MECHANISM) + _INT32.pack(len(first)) + first))
        elif code == _AUTH_SASL_CONTINUE and scram is not None:
            await self._send(_message(b"p", scram.client_final(payload[4:])))
        elif code == _AUTH_SASL_FINAL and scram is not None:
            scram.verify_server_final(payload[4:])
        else:
            raise self._errors.auth(f"unsupported authentication request {code}")
        return scram

    async def query(self, sql: str) -> SimpleQueryResult:
        """Run one statement with the simple query protocol and return its rows.

        Raises:
            errors.refused: The server answered with an error (the connection stays
                in step: the answer was read to its end).
            errors.unreachable: The connection broke.
            errors.protocol: The answer made no sense.

        Cancellation:
            The connection is left mid-conversation; the caller must close it.
        """
        await self._send(_message(b"Q", _cstring(sql)))
        columns: tuple[str, ...] = ()
        rows: list[tuple[str | None, ...]] = []
        notices: list[str] = []
        tag = ""
        error: _ServerNotice | None = None
        while True:
            kind, payload = await self._receive()
            if kind == b"T":
                columns = parse_row_description(payload)
            elif kind == b"D":
                row = parse_data_row(payload)
                if len(row) != len(columns):
                    raise self._errors.protocol(f"row of {len(row)} values for {columns}")
                rows.append(row)
            elif kind == b"C":
                tag = payload.rstrip(b"\0").decode(errors="replace")
            elif kind == b"N":
                notice = _ServerNotice.parse(payload)
                notices.append(f"{notice.message}\n{notice.detail}".strip())
            elif kind == b"E":
                error = _ServerNotice.parse(payload)
            elif kind == b"Z":
                break
        if error is not None:
            raise self._errors.refused(sql, error.sqlstate, error.message)
        return SimpleQueryResult(tag, columns, tuple(rows), tuple(notices))

    async def abort(self) -> None:
        """Close the socket without a goodbye, also while the caller is being cancelled.

        For a connection left in the middle of a command (an abandoned PAUSE): the
        server sees the client go; nothing more is sent on it.
        """
        # Closing a socket stream does not wait on the peer; the bound only guards
        # against a backend that would.
        with anyio.move_on_after(1, shield=True):
            await self._stream.aclose()

    async def aclose(self) -> None:
        """Say goodbye (Terminate) and close the socket; never raises for a dead peer."""
        # A dead peer needs no goodbye: closing is all that is left to do.
        with contextlib.suppress(*_ERRORS_DURING_IO):
            await self._stream.send(_message(b"X", b""))
        await self._stream.aclose()


def _describe(endpoint: Address) -> str:
    if endpoint.is_unix_socket:
        return endpoint.unix_socket_path
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    return f"{host}:{endpoint.port}"


async def _connect(endpoint: Address, tls: TlsPolicy | None, errors: WireErrors) -> ByteStream:
    if endpoint.is_unix_socket:
        # Like libpq: a unix socket is never encrypted, whatever sslmode says.
        return await anyio.connect_unix(endpoint.unix_socket_path)
    stream: ByteStream = await anyio.connect_tcp(endpoint.host, endpoint.port)
    if tls is None:
        return stream
    try:
        return await _upgrade(stream, endpoint, tls, errors)
    except BaseException:
        with anyio.move_on_after(1, shield=True):
            await stream.aclose()
        raise


async def _upgrade(
    stream: ByteStream, endpoint: Address, tls: TlsPolicy, errors: WireErrors
) -> ByteStream:
    """Send SSLRequest; return the TLS stream, or ``stream`` when TLS is declined and optional."""
    await stream.send(_INT32.pack(8) + _INT32.pack(_SSL_REQUEST))
    # One byte, read alone: nothing the server sends before the handshake may be taken
    # as part of the encrypted conversation.
    answer = await stream.receive(1)
    if answer == b"S":
        return await TLSStream.wrap(
            stream,
            hostname=endpoint.host,
            ssl_context=tls.context,
            standard_compatible=False,  # servers close without close_notify
        )
    if answer != b"N":
        raise errors.protocol(f"{_describe(endpoint)} answered SSLRequest with {answer!r}")
    if tls.required:
        raise errors.unreachable(f"{_describe(endpoint)} does not accept TLS connections")
    return stream


async def connect_simple_query(
    endpoint: Address,
    *,
    user: str,
    password: str | None,
    database: str,
    connect_timeout: timedelta,
    errors: WireErrors,
    tls: TlsPolicy | None = None,
    parameters: Mapping[str, str] | None = None,
) -> SimpleQueryConnection:
    """Connect and log in to ``endpoint``; the caller closes the connection (``aclose``).

    ``connect_timeout`` bounds connecting (with the TLS handshake) and logging in.

    Raises:
        errors.unreachable: No connection or no login within ``connect_timeout``, or
            a TLS upgrade that was required and declined or failed.
        errors.auth: The login was refused.

    Cancellation:
        The socket is closed before the cancellation propagates.
    """
    where = _describe(endpoint)
    try:
        with anyio.fail_after(connect_timeout.total_seconds()):
            stream = await _connect(endpoint, tls, errors)
    except TimeoutError as exc:
        raise errors.unreachable(f"no connection to {where} within {connect_timeout}") from exc
    except _ERRORS_DURING_IO as exc:
        raise errors.unreachable(f"cannot connect to {where}: {exc}") from exc
    connection = SimpleQueryConnection(stream, endpoint, errors)
    try:
        try:
            with anyio.fail_after(connect_timeout.total_seconds()):
                await connection.login(
                    user=user, password=password, database=database, parameters=parameters
                )
        except TimeoutError as exc:
            raise errors.unreachable(f"no login to {where} within {connect_timeout}") from exc
    except BaseException:
        await close_quietly(connection)
        raise
    return connection


async def close_quietly(connection: SimpleQueryConnection) -> None:
    """Close ``connection``, also while the caller is being cancelled."""
    # aclose of a socket stream does not block; the shield keeps a pending cancellation
    # from skipping the Terminate message and leaking the fd.
    with anyio.move_on_after(1, shield=True):
        await connection.aclose()


@asynccontextmanager
async def open_simple_query(
    endpoint: Address,
    *,
    user: str,
    password: str | None,
    database: str,
    connect_timeout: timedelta,
    errors: WireErrors,
    tls: TlsPolicy | None = None,
    parameters: Mapping[str, str] | None = None,
) -> AsyncIterator[SimpleQueryConnection]:
    """Connect and log in to ``endpoint``; yield the connection and always close it.

    ``connect_timeout`` bounds connecting and logging in only; the caller bounds the
    queries: the caller owns the timeout.

    Raises:
        errors.unreachable: No connection within ``connect_timeout``.
        errors.auth: The login was refused.

    Cancellation:
        The socket is closed (abruptly if need be) before the cancellation propagates.
    """
    connection = await connect_simple_query(
        endpoint,
        user=user,
        password=password,
        database=database,
        connect_timeout=connect_timeout,
        errors=errors,
        tls=tls,
        parameters=parameters,
    )
    try:
        yield connection
    finally:
        await close_quietly(connection)
