"""How a failed etcd request is classified: retry elsewhere, or report as etcd's answer.

etcd's JSON gateway answers a failed request with an HTTP error status and a body
``{"error": ..., "code": <gRPC status code>, "message": ...}``: :class:`GatewayError`
carries that code, so the failover and hedging code decide with one predicate
(:func:`retryable`) whether another endpoint may succeed, as they did when the client
spoke gRPC (the gRPC transport, :mod:`grpc_client`, raises it with the status etcd's
gRPC server sent). Failures below the gateway (refused, reset, a TLS handshake refused, an
answer that is not the gateway's) are :class:`TransportError`; a connection closed
under a request by another task (failover dropped it) is
:class:`ConnectionClosedUnderCall`.
"""

from __future__ import annotations

from enum import IntEnum
from typing import final

from pgcm_common._etcd.settings import EtcdEndpoint
from pgcm_common.errors import EtcdUnavailable

__all__ = [
    "NO_ANSWER",
    "ConnectionClosedUnderCall",
    "GatewayError",
    "MemberUnresponsive",
    "Status",
    "TransportError",
    "details",
    "retryable",
    "status",
]


class Status(IntEnum):
    """The gRPC status codes etcd's gateway reports that pgcm tells apart."""

    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    PERMISSION_DENIED = 7
    FAILED_PRECONDITION = 9
    OUT_OF_RANGE = 11
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


# Failures after which another endpoint (or a fresh connection) may succeed.
# UNAUTHENTICATED comes when the auth token expired (a new connection authenticates
# again); UNAVAILABLE also covers "leader changed" during an election.
_RETRYABLE = frozenset(
    {Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.CANCELLED, Status.UNAUTHENTICATED}
)
# Statuses that mean the member did not answer a probe (anything else is an answer).
NO_ANSWER = frozenset({Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.CANCELLED})


@final
class GatewayError(Exception):
    """etcd answered a request with an error: its gRPC status code and message."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{message} (code {code})")


class TransportError(Exception):
    """The connection failed, or what came back is not an answer of etcd's gateway."""


class ConnectionClosedUnderCall(EtcdUnavailable):
    """Another task closed the connection a request was waiting on (failover)."""


@final
class MemberUnresponsive(Exception):
    """A request stalled and the member did not answer a liveness probe either."""

    def __init__(self, endpoint: EtcdEndpoint, waited_s: float) -> None:
        self.endpoint = endpoint
        self.waited_s = waited_s
        super().__init__(f"{endpoint} did not answer a liveness probe within {waited_s:g}s")


def status(exc: BaseException) -> int | None:
    """Return etcd's status code behind ``exc`` (itself or a cause), if etcd answered."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, GatewayError):
            return seen.code
        seen = seen.__cause__
    return None


def details(exc: BaseException) -> str:
    """Return etcd's error message behind ``exc``, else ``exc`` itself as text."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, GatewayError):
            return seen.message
        seen = seen.__cause__
    return str(exc) or type(exc).__name__


def retryable(exc: BaseException) -> bool:
    """Return whether another endpoint (or a fresh connection) may succeed after ``exc``."""
    if isinstance(exc, TimeoutError | OSError | TransportError | MemberUnresponsive):
        return True
    return status(exc) in _RETRYABLE
