"""Value types of pgcm settings: Go-style durations, etcd lease TTLs, non-empty secrets.

Durations use the :data:`Duration` type, which reads Go-style strings (``"5s"``,
``"500ms"``, ``"1m30s"``) and plain numbers of seconds, and writes Go-style strings back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, SecretStr

__all__ = [
    "MIN_LEASE_TTL",
    "Duration",
    "LeaseTTL",
    "NonEmptySecret",
    "PositiveDuration",
    "format_duration",
    "parse_duration",
]


# Go's time.ParseDuration units, in nanoseconds. "µ" (U+00B5) and "μ" (U+03BC) both
# occur in the wild because Go accepts both.
_UNIT_NS: Mapping[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_COMPONENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style duration (``"1m30s"``, ``"500ms"``) or a number of seconds.

    Precision is one microsecond (what :class:`~datetime.timedelta` holds); finer values
    are rounded to the nearest microsecond.

    Raises:
        ValueError: the text is not a non-negative duration.
    """
    raw = text.strip()
    if not raw:
        raise ValueError("empty duration")
    if raw.startswith("-"):
        raise ValueError(f"duration {text!r} must not be negative")
    body = raw.removeprefix("+")
    if _NUMBER.fullmatch(body):
        # A bare number is seconds: what an operator means by `pause_timeout = 5`.
        return _from_nanoseconds(Decimal(body) * _UNIT_NS["s"])
    pos = 0
    total = Decimal(0)
    for match in _COMPONENT.finditer(body):
        if match.start() != pos:
            break
        total += Decimal(match.group(1)) * _UNIT_NS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(body):
        raise ValueError(
            f"invalid duration {text!r}: use a number of seconds or Go units "
            "such as '5s', '500ms', '1m30s' (units: ns, us, ms, s, m, h)"
        )
    return _from_nanoseconds(total)


def _from_nanoseconds(nanoseconds: Decimal) -> timedelta:
    try:
        micro = int((nanoseconds / 1000).to_integral_value())
        return timedelta(microseconds=micro)
    except (OverflowError, InvalidOperation) as exc:
        raise ValueError("duration out of range") from exc


_MICROS_PER_MS = 1_000
_MICROS_PER_S = 1_000_000


def format_duration(value: timedelta) -> str:
    """Write a duration the way Go would accept it, in its shortest exact form.

    ``timedelta(seconds=90)`` gives ``"1m30s"``, ``timedelta(milliseconds=500)`` gives
    ``"500ms"``; zero is ``"0s"``. Negative values get a leading ``-``.
    """
    micro = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    if micro == 0:
        return "0s"
    sign = "-" if micro < 0 else ""
    micro = abs(micro)
    if micro < _MICROS_PER_MS:
        return f"{sign}{micro}us"
    if micro < _MICROS_PER_S:
        return f"{sign}{_decimal(micro, 1_000)}ms"
    hours, rest = divmod(micro, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    if rest:
        parts.append(f"{_decimal(rest, 1_000_000)}s")
    return sign + "".join(parts)


def _decimal(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{frac:0{digits}d}".rstrip("0")


def _validate_duration(value: object) -> object:
    if isinstance(value, bool):
        raise TypeError("a duration must be a string like '5s' or a number of seconds")
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError("a duration must not be negative")
        return value
    if isinstance(value, int | float):
        return parse_duration(repr(value)) if value >= 0 else parse_duration(str(value))
    if isinstance(value, str):
        return parse_duration(value)
    return value  # let pydantic report the type error


Duration = Annotated[
    timedelta,
    BeforeValidator(_validate_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
"""A non-negative :class:`~datetime.timedelta` read from ``"5s"``/``"500ms"``/seconds."""


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be positive")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
"""A :data:`Duration` above zero: intervals, timeouts and bounds that 0 would disable."""

MIN_LEASE_TTL = timedelta(seconds=2)
"""The shortest etcd lease TTL pgcm accepts: what etcd itself grants at the least.

etcd raises every lease it grants to at least 1.5 election timeouts, rounded up to
whole seconds (its election timeout is 1 s by default: 2 s). A shorter TTL here would
not be the TTL etcd applies, and keepalives sent every third of it would race the
expiry on a loaded host.
"""


def _lease_ttl(value: timedelta) -> timedelta:
    if value < MIN_LEASE_TTL:
        raise ValueError(
            f"must be at least {format_duration(MIN_LEASE_TTL)}: etcd grants no shorter lease"
        )
    return value


LeaseTTL = Annotated[Duration, AfterValidator(_lease_ttl)]
"""The TTL of an etcd lease: a :data:`Duration` of at least :data:`MIN_LEASE_TTL`."""


def _not_empty_secret(value: SecretStr) -> SecretStr:
    # An empty secret is nearly always a templating slip (an EnvironmentFile line whose
    # value went missing). Taken as "no secret" it would quietly turn authentication
    # off; taken as a secret it fails only at run time. Refuse it while loading, so
    # that show-config and run agree.
    if not value.get_secret_value():
        raise ValueError("must not be empty (leave it unset instead)")
    return value


NonEmptySecret = Annotated[SecretStr, AfterValidator(_not_empty_secret)]
"""A :class:`~pydantic.SecretStr` that refuses ``""``: leave such a setting unset instead."""
