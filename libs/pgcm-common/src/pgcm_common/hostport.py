"""``host:port`` addresses: one parser and the pydantic types of the settings that hold one.

Two kinds of setting hold such an address:

* an address to **connect** to (pgcm-failover's ``endpoints``): the host is required and
  the port is 1-65535;
* an address to **bind** (``metrics_address``, supervise's ``bind_address``): an empty
  host (``":9187"``) means every address, and port 0 asks the kernel for a free port
  (the daemon logs the port it got; tests use it).

IPv6 hosts are written in brackets (``[::1]:8080``), as in URLs; an IPv6 address without
brackets is refused rather than guessed at, since ``::1:8080`` could also be read as the
address ``::1:8080`` with no port.

The settings types keep the text as the operator wrote it (``show-config`` prints it
back unchanged); code that needs the parts calls :func:`parse_host_port` again, which
cannot fail on a value the type accepted.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Final, NamedTuple

from pydantic import AfterValidator

__all__ = [
    "ANY_HOST",
    "MAX_PORT",
    "BindAddress",
    "HostPort",
    "HostPortText",
    "parse_bind_address",
    "parse_host_port",
]

MAX_PORT: Final = 65_535
# What an empty host in a bind address means: every IPv4 address, as Go's net.Listen does.
ANY_HOST: Final = "0.0.0.0"  # noqa: S104 - only ever used for an operator's explicit ":port"

_PORT = re.compile(r"[0-9]+")
_EXAMPLE = "host:port, or [v6-address]:port"


class HostPort(NamedTuple):
    """A parsed ``host:port``; a tuple, so ``host, port = parse_host_port(...)`` works.

    Attributes:
        host: the host without IPv6 brackets; ``""`` in a bind address means every address.
        port: 0-65535 (0 only in bind addresses).
    """

    host: str
    port: int

    def __str__(self) -> str:
        """Write the address back as ``host:port`` (``[v6]:port`` for IPv6)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def bind_host(self) -> str:
        """Return the host to bind: :data:`ANY_HOST` for an empty host."""
        return self.host or ANY_HOST


def parse_host_port(text: str, *, bind: bool = False) -> HostPort:
    """Parse ``host:port`` or ``[v6-address]:port``.

    Args:
        text: the address.
        bind: parse an address to listen on: the host may be empty (every address) and
            the port may be 0 (any free port).

    Raises:
        ValueError: the message names what is wrong (no port, a port that is not a
            number or out of range, a missing host, an IPv6 address without brackets).
    """
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"expected {_EXAMPLE} without spaces, got {text!r}")
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r} has no port: expected {_EXAMPLE}")
    if not _PORT.fullmatch(port_text):
        raise ValueError(f"port {port_text!r} of {text!r} is not a number")
    port = int(port_text)
    lowest = 0 if bind else 1
    if not lowest <= port <= MAX_PORT:
        raise ValueError(f"port {port} of {text!r} is out of range {lowest}-{MAX_PORT}")
    return HostPort(_parse_host(host, text, bind=bind), port)


def _parse_host(host: str, text: str, *, bind: bool) -> str:
    if host.startswith("[") or host.endswith("]"):
        inner = host.removeprefix("[").removesuffix("]")
        if not (host.startswith("[") and host.endswith("]")) or "[" in inner or "]" in inner:
            raise ValueError(f"unbalanced brackets in {text!r}: expected [v6-address]:port")
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise ValueError(
                f"{inner!r} in {text!r} is not an IPv6 address (only those take brackets)"
            ) from None
        return inner
    if ":" in host:
        raise ValueError(f"IPv6 address in {text!r} needs brackets: [{host}]:port")
    if not host and not bind:
        raise ValueError(f"{text!r} has no host: expected {_EXAMPLE}")
    return host


def parse_bind_address(text: str) -> HostPort:
    """Parse an address to listen on: ``parse_host_port(text, bind=True)``.

    Raises:
        ValueError: see :func:`parse_host_port`.
    """
    return parse_host_port(text, bind=True)


def _check_host_port(text: str) -> str:
    parse_host_port(text)
    return text


def _check_bind_address(text: str) -> str:
    parse_bind_address(text)
    return text


HostPortText = Annotated[str, AfterValidator(_check_host_port)]
"""A setting holding an address to connect to: host required, port 1-65535."""

BindAddress = Annotated[str, AfterValidator(_check_bind_address)]
"""A setting holding an address to listen on: ``:port`` is every address, port 0 any port."""
