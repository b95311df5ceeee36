"""Validate the primary's address read from etcd before it goes anywhere near pgbouncer.ini.

The etcd value is untrusted input: anyone who can write the key could otherwise inject
PgBouncer configuration (the original wrote a newline-injected value straight into
pgbouncer.ini). Only an IPv4 address, an IPv6 address or a DNS hostname passes; the
value must already be exactly that, with no surrounding whitespace to trim.

An IPv4 address in any other spelling that the C library's ``inet_aton`` reads
(``0x7f000001``, ``127.1``, ``0177.0.0.1``) is refused: it is neither a canonical
address nor a hostname, and what it means depends on which resolver PgBouncer was
built with. Such a value could be acknowledged (``SHOW DATABASES`` shows the text as
written) while PgBouncer cannot connect to it.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Final, final

from pgcm_proxy.errors import RejectedAddress

__all__ = ["MAX_HOSTNAME_LENGTH", "PrimaryAddress", "parse_primary_address"]

MAX_HOSTNAME_LENGTH: Final = 253  # RFC 1035, without the trailing dot
_MAX_LABEL_LENGTH: Final = 63
# RFC 1123 label: letters, digits and inner hyphens. Underscores are refused: they are not
# valid in hostnames and PgBouncer passes the value to getaddrinfo() unchanged.
_LABEL: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
# A part of a numeric IPv4 spelling as inet_aton reads it: decimal, octal or hex.
_NUMBER: Final = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*")


@final
@dataclass(frozen=True, slots=True)
class PrimaryAddress:
    """A validated host PgBouncer may connect to: an IP address or a DNS hostname."""

    host: str

    def __str__(self) -> str:
        return self.host


# Remembering the valid values seen last (a cluster's few nodes) saves ~25 us per etcd
# event, most of it ipaddress' parsing, on the path from the put to pgbouncer.ini. A
# refused value raises and is never remembered.
@functools.lru_cache(maxsize=64)
def parse_primary_address(raw: bytes | None) -> PrimaryAddress:
    """Return the validated address held in an etcd value.

    Raises:
        RejectedAddress: the value is missing, empty, not ASCII, or neither an IP
            address nor a DNS hostname. ``reason`` is a short, metric-friendly code.
    """
    if raw is None:
        raise RejectedAddress("missing", raw)
    if not raw:
        raise RejectedAddress("empty", raw)
    if len(raw) > MAX_HOSTNAME_LENGTH:
        raise RejectedAddress("too_long", raw)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise RejectedAddress("not_ascii", raw) from exc
    if not text.isprintable() or any(ch.isspace() for ch in text):
        raise RejectedAddress("whitespace_or_control", raw)
    if "%" in text and ":" in text:
        # ipaddress accepts an IPv6 zone id of any printable text ("fe80::1%a=b;c"): it
        # would carry '=' and ';' into pgbouncer.ini. A link-local primary is not a
        # deployment we support, so zone ids are refused outright.
        raise RejectedAddress("zone_id", raw)
    try:
        return PrimaryAddress(str(ipaddress.ip_address(text)))
    except ValueError:
        pass
    if _is_hostname(text):
        return PrimaryAddress(text.lower())
    raise RejectedAddress("not_an_address", raw)


def _is_hostname(text: str) -> bool:
    labels = text.split(".")
    if not all(len(label) <= _MAX_LABEL_LENGTH and _LABEL.fullmatch(label) for label in labels):
        return False
    # A name whose last label is a number (decimal, octal or hex: "10.0.0.256",
    # "0x7f000001", "1.0x1") would be read as a (malformed or non-canonical) IPv4
    # address by inet_aton/getaddrinfo(): refuse it instead of letting PgBouncer guess.
    # Top-level domains are never numeric, so no real hostname is lost.
    return _NUMBER.fullmatch(labels[-1]) is None
