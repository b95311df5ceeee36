"""Typed, immutable values parsed from the admin console's SHOW output.

Columns are looked up by name, never by position: PgBouncer adds columns between
releases (1.18 has ``min_pool_size``, later ones ``server_lifetime``, ``load_balance_hosts``…),
so unknown columns are ignored and optional ones default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import final

from pgcm_common._pgbouncer.errors import PgBouncerProtocolError

__all__ = ["DatabaseRow", "PgBouncerState", "PgBouncerVersion", "PoolRow"]

Record = Mapping[str, str | None]
_VERSION = re.compile(r"PgBouncer\s+(\d+)\.(\d+)(?:\.(\d+))?", re.IGNORECASE)
_YES = frozenset({"1", "yes", "true", "on", "t"})


def _text(record: Record, column: str) -> str:
    try:
        value = record[column]
    except KeyError as exc:
        raise PgBouncerProtocolError(f"SHOW output lacks column {column!r}") from exc
    return value or ""


def _optional_text(record: Record, column: str) -> str | None:
    return record.get(column) or None


def _int(record: Record, column: str, *, required: bool = False) -> int:
    value = record.get(column)
    if value is None or value == "":
        if required:
            raise PgBouncerProtocolError(f"SHOW output lacks column {column!r}")
        return 0
    try:
        return int(value)
    except ValueError as exc:
        raise PgBouncerProtocolError(f"column {column!r} is not an integer: {value!r}") from exc


def _bool(record: Record, column: str) -> bool:
    return (record.get(column) or "").strip().lower() in _YES


@final
@dataclass(frozen=True, slots=True)
class DatabaseRow:
    """One row of ``SHOW DATABASES``: where PgBouncer routes a database.

    ``host`` is ``None`` for a unix socket backend and for the admin console itself.
    ``paused`` is a per-database ``PAUSE <db>`` only: a global PAUSE does not show here.
    """

    name: str
    host: str | None
    port: int
    database: str
    force_user: str | None
    pool_size: int
    pool_mode: str | None
    max_connections: int
    current_connections: int
    paused: bool
    disabled: bool

    @classmethod
    def from_record(cls, record: Record) -> DatabaseRow:
        """Parse one ``SHOW DATABASES`` row.

        Raises:
            PgBouncerProtocolError: A required column is missing or not a number.
        """
        return cls(
            name=_text(record, "name"),
            host=_optional_text(record, "host"),
            port=_int(record, "port", required=True),
            database=_text(record, "database"),
            force_user=_optional_text(record, "force_user"),
            pool_size=_int(record, "pool_size"),
            pool_mode=_optional_text(record, "pool_mode"),
            max_connections=_int(record, "max_connections"),
            current_connections=_int(record, "current_connections"),
            paused=_bool(record, "paused"),
            disabled=_bool(record, "disabled"),
        )


@final
@dataclass(frozen=True, slots=True)
class PoolRow:
    """One row of ``SHOW POOLS``: clients and servers of one database/user pair."""

    database: str
    user: str
    cl_active: int
    cl_waiting: int
    sv_active: int
    sv_idle: int
    sv_used: int
    sv_tested: int
    sv_login: int
    maxwait_us: int
    pool_mode: str | None

    @classmethod
    def from_record(cls, record: Record) -> PoolRow:
        """Parse one ``SHOW POOLS`` row (``maxwait`` seconds + ``maxwait_us`` combined).

        Raises:
            PgBouncerProtocolError: A required column is missing or not a number.
        """
        return cls(
            database=_text(record, "database"),
            user=_text(record, "user"),
            cl_active=_int(record, "cl_active"),
            cl_waiting=_int(record, "cl_waiting"),
            sv_active=_int(record, "sv_active"),
            sv_idle=_int(record, "sv_idle"),
            sv_used=_int(record, "sv_used"),
            sv_tested=_int(record, "sv_tested"),
            sv_login=_int(record, "sv_login"),
            maxwait_us=_int(record, "maxwait") * 1_000_000 + _int(record, "maxwait_us"),
            pool_mode=_optional_text(record, "pool_mode"),
        )


@final
@dataclass(frozen=True, slots=True)
class PgBouncerVersion:
    """The running PgBouncer's version, e.g. ``PgBouncer 1.18.0``."""

    text: str
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> PgBouncerVersion:
        """Parse the text ``SHOW VERSION`` prints.

        Raises:
            PgBouncerProtocolError: The text names no PgBouncer version.
        """
        match = _VERSION.search(text)
        if match is None:
            raise PgBouncerProtocolError(f"not a PgBouncer version: {text!r}")
        major, minor, patch = match.groups()
        return cls(text.strip(), int(major), int(minor), int(patch or 0))


@final
@dataclass(frozen=True, slots=True)
class PgBouncerState:
    """Whether PgBouncer is paused, as far as it tells.

    PgBouncer 1.18 has no ``SHOW STATE`` (it arrived in 1.21), and nothing else on its
    console reveals a global PAUSE; ``paused``/``suspended`` are then ``None``
    (unknown), never guessed. ``paused_databases``/``disabled_databases`` come from
    ``SHOW DATABASES`` and are always known.
    """

    paused: bool | None
    suspended: bool | None
    paused_databases: frozenset[str]
    disabled_databases: frozenset[str]

    @classmethod
    def from_show(
        cls, state_records: tuple[Record, ...] | None, databases: tuple[DatabaseRow, ...]
    ) -> PgBouncerState:
        """Combine ``SHOW STATE`` key/value rows (``None`` if unsupported) and databases."""
        paused: bool | None = None
        suspended: bool | None = None
        if state_records is not None:
            flags = {
                (record.get("key") or "").lower(): (record.get("value") or "").lower() in _YES
                for record in state_records
            }
            paused = flags.get("paused")
            suspended = flags.get("suspended")
        return cls(
            paused=paused,
            suspended=suspended,
            paused_databases=frozenset(row.name for row in databases if row.paused),
            disabled_databases=frozenset(row.name for row in databases if row.disabled),
        )
