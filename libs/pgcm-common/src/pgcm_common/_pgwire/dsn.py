"""libpq connection strings, in the URL and the key=value form, as pgcm's client honours them.

Read: ``host`` (a name, an address, or a unix socket directory starting with ``/``),
``port``, ``user``, ``dbname`` (``database`` too), ``password``, ``passfile``,
``sslmode`` (``disable``, ``prefer``, ``require``, ``verify-ca``, ``verify-full``),
``sslrootcert``, ``sslcert``, ``sslkey`` and ``connect_timeout``. ``application_name``,
``options`` and any name that is not a libpq keyword are sent in the startup message
(run-time settings such as ``statement_timeout``). A libpq keyword this client does not
implement, more than one host, or a value it cannot honour is refused when the
string is parsed, so a bad setting stops the service at start, not at the first probe.

Unlike libpq, nothing is read from the environment (``PGHOST`` ...) or from
``~/.pgpass`` unless ``passfile`` names it, and without ``sslmode`` the connection is
not encrypted: the local PostgreSQL is reached over a unix socket or loopback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, final, get_args
from urllib.parse import parse_qsl, unquote, urlsplit

from pgcm_common._pgwire.address import ServerAddress

__all__ = ["DEFAULT_HOSTS", "DEFAULT_PORT", "Endpoint", "PostgresDsn", "SslMode", "parse_dsn"]

SslMode = Literal["disable", "prefer", "require", "verify-ca", "verify-full"]
_SSL_MODES: Final = get_args(SslMode)
# Without a host, these are tried in turn (the socket directories Debian's and upstream's
# builds use, then TCP on loopback), as the earlier asyncpg-based client did.
DEFAULT_HOSTS: Final = ("/run/postgresql", "/var/run/postgresql", "/tmp", "localhost")  # noqa: S108
DEFAULT_PORT: Final = 5432
_MAX_PORT: Final = 65535

_READ: Final = frozenset(
    {
        "host",
        "port",
        "user",
        "dbname",
        "database",
        "password",
        "passfile",
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "connect_timeout",
    }
)
# libpq keywords that would change how libpq connects: silently ignoring one could
# connect differently from what the operator wrote, so they are refused.
_NOT_IMPLEMENTED: Final = frozenset(
    {
        "hostaddr",
        "service",
        "client_encoding",
        "fallback_application_name",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "replication",
        "gssencmode",
        "gsslib",
        "gssdelegation",
        "krbsrvname",
        "require_auth",
        "channel_binding",
        "requiressl",
        "requirepeer",
        "sslnegotiation",
        "sslcompression",
        "sslpassword",
        "sslcertmode",
        "sslcrl",
        "sslcrldir",
        "sslsni",
        "sslkeylogfile",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "target_session_attrs",
        "load_balance_hosts",
    }
)


@final
@dataclass(frozen=True, slots=True)
class Endpoint(ServerAddress):
    """One address to try: a host (or socket directory) and a port."""

    host: str
    port: int


@final
@dataclass(frozen=True, slots=True)
class PostgresDsn:
    """A parsed connection string; ``None`` means libpq's default at connect time.

    Attributes:
        hosts: the given host, or :data:`DEFAULT_HOSTS` to try in turn.
        port: the TCP port, also part of a unix socket's file name.
        user: the role; the process's user name when unset.
        dbname: the database; the role's name when unset.
        password: the password, if the string holds one.
        passfile: a ``.pgpass``-format file to look the password up in.
        sslmode: whether and how to use TLS over TCP (never over a unix socket).
        sslrootcert: the CA file (``system``: the system's store) for verification.
        sslcert: the client certificate file; sslkey: its key, if not in the same file.
        connect_timeout: libpq's bound on connecting, in seconds (``None``: none).
        parameters: further startup parameters (``application_name``, settings).
    """

    hosts: tuple[str, ...] = DEFAULT_HOSTS
    port: int = DEFAULT_PORT
    user: str | None = None
    dbname: str | None = None
    password: str | None = field(default=None, repr=False)
    passfile: str | None = None
    sslmode: SslMode = "disable"
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None
    connect_timeout: float | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """Return the addresses to try, in order."""
        return tuple(Endpoint(host, self.port) for host in self.hosts)


def parse_dsn(text: str) -> PostgresDsn:
    """Parse a ``postgresql://`` URL or a ``key=value`` string.

    Raises:
        ValueError: the string is malformed or asks for something this client does not
            do; the message never repeats the string (it may hold a password).
    """
    stripped = text.strip()
    if stripped.startswith(("postgresql://", "postgres://")):
        values = _parse_url(stripped)
    elif "://" in stripped.partition("=")[0]:
        raise ValueError("a URL must start with postgresql:// or postgres://")
    else:
        values = _parse_keywords(stripped)
    return _build(values)


def _parse_url(text: str) -> dict[str, str]:
    parts = urlsplit(text)
    values: dict[str, str] = {}
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if user:
            values["user"] = unquote(user)
        if colon:
            values["password"] = unquote(password)
    if "," in hostport:
        raise ValueError("more than one host: name the one local PostgreSQL")
    host, port = _split_host_port(hostport)
    if host:
        values["host"] = unquote(host)
    if port:
        values["port"] = port
    if dbname := parts.path.removeprefix("/"):
        values["dbname"] = unquote(dbname)
    # Parameters of the query string override the parts before it, as in libpq.
    values.update(parse_qsl(parts.query, keep_blank_values=True))
    return values


def _split_host_port(hostport: str) -> tuple[str, str]:
    if hostport.startswith("["):
        host, bracket, rest = hostport[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("malformed IPv6 address in the URL (expected [address]:port)")
        return host, rest.removeprefix(":")
    host, _, port = hostport.partition(":")
    return host, port


def _parse_keywords(text: str) -> dict[str, str]:
    """Parse libpq's ``key = value`` list (values may be single-quoted; backslash escapes)."""
    values: dict[str, str] = {}
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return values
        start = i
        while i < n and text[i] != "=" and not text[i].isspace():
            i += 1
        key = text[start:i]
        while i < n and text[i].isspace():
            i += 1
        if i >= n or text[i] != "=" or not key:
            raise ValueError(f"expected key=value, found {key[:40]!r} without '='")
        i += 1
        while i < n and text[i].isspace():
            i += 1
        value, i = _keyword_value(text, i, key)
        values[key] = value


def _keyword_value(text: str, i: int, key: str) -> tuple[str, int]:
    n = len(text)
    quoted = i < n and text[i] == "'"
    if quoted:
        i += 1
    chars: list[str] = []
    while i < n:
        char = text[i]
        if char == "\\" and i + 1 < n:
            chars.append(text[i + 1])
            i += 2
            continue
        if (quoted and char == "'") or (not quoted and char.isspace()):
            break
        chars.append(char)
        i += 1
    if quoted:
        if i >= n:
            raise ValueError(f"unterminated quoted value of {key!r}")
        i += 1
    return "".join(chars), i


def _build(values: dict[str, str]) -> PostgresDsn:
    refused = sorted(key for key in values if key in _NOT_IMPLEMENTED)
    if refused:
        raise ValueError(
            f"{', '.join(refused)} not supported by pgcm's PostgreSQL client; it reads "
            + ", ".join(sorted(_READ))
            + " (other names are sent as run-time settings)"
        )
    if "dbname" in values and "database" in values:
        raise ValueError("dbname and database name the same setting: give one")
    host = values.get("host") or None
    if host is not None and "," in host:
        raise ValueError("more than one host: name the one local PostgreSQL")
    sslmode = values.get("sslmode") or "disable"
    if sslmode not in _SSL_MODES:
        raise ValueError(
            f"sslmode {sslmode[:20]!r} not supported; use one of {', '.join(_SSL_MODES)}"
        )
    if values.get("sslkey") and not values.get("sslcert"):
        raise ValueError("sslkey needs sslcert (the client certificate it belongs to)")
    return PostgresDsn(
        hosts=DEFAULT_HOSTS if host is None else (host,),
        port=_port(values.get("port")),
        user=values.get("user") or None,
        dbname=values.get("dbname") or values.get("database") or None,
        password=values.get("password"),
        passfile=values.get("passfile") or None,
        sslmode=sslmode,  # type: ignore[arg-type] # checked against _SSL_MODES above
        sslrootcert=values.get("sslrootcert") or None,
        sslcert=values.get("sslcert") or None,
        sslkey=values.get("sslkey") or None,
        connect_timeout=_timeout(values.get("connect_timeout")),
        parameters={key: value for key, value in values.items() if key not in _READ},
    )


def _port(text: str | None) -> int:
    if not text:
        return DEFAULT_PORT
    if not text.isdigit() or not 1 <= int(text) <= _MAX_PORT:
        raise ValueError(f"port {text[:20]!r} is not a number from 1 to {_MAX_PORT}")
    return int(text)


def _timeout(text: str | None) -> float | None:
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"connect_timeout {text[:20]!r} is not a number of seconds")
    # libpq: 0 means wait forever; postgres_timeout still bounds the probe then.
    return seconds or None
