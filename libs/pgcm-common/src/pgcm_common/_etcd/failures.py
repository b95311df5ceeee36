"""How a failed etcd request is classified: retry elsewhere, or report as etcd's answer.

aetcd wraps grpc.aio's ``AioRpcError`` in its own exceptions (the gRPC error is the
``__cause__``), and grpc.aio reports a channel closed under a call as a cancellation of
the awaiting task. This module reads the status behind either and turns grpc.aio's own
cancellations into :class:`ConnectionClosedUnderCall`, so the failover and hedging code
can decide with one predicate (:func:`retryable`) whether another endpoint may succeed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import final

import aetcd.exceptions
import grpc
import grpc.aio

from pgcm_common._etcd.settings import EtcdEndpoint
from pgcm_common.errors import EtcdUnavailable

__all__ = [
    "NO_ANSWER",
    "ConnectionClosedUnderCall",
    "MemberUnresponsive",
    "details",
    "foreign_cancellation_as_unavailable",
    "retryable",
    "status",
]

# Failures after which another endpoint (or a fresh connection) may succeed. CANCELLED
# shows up on calls whose channel we closed after another call failed on it;
# UNAUTHENTICATED when the auth token expired (a new connection authenticates again).
_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)
# Statuses that mean the member did not answer a probe (anything else is an answer).
NO_ANSWER = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


class ConnectionClosedUnderCall(EtcdUnavailable):
    """grpc.aio cancelled a call because its channel was closed by another task."""


@final
class MemberUnresponsive(Exception):
    """A request stalled and the member did not answer a liveness probe either."""

    def __init__(self, endpoint: EtcdEndpoint, waited_s: float) -> None:
        self.endpoint = endpoint
        self.waited_s = waited_s
        super().__init__(f"{endpoint} did not answer a liveness probe within {waited_s:g}s")


@contextmanager
def foreign_cancellation_as_unavailable(what: str, endpoint: object) -> Iterator[None]:
    """Turn grpc.aio's own cancellation of a call into EtcdUnavailable.

    grpc.aio cancels every call in flight on a channel when the channel is closed, and
    the awaiting coroutine then sees ``asyncio.CancelledError`` although nobody
    cancelled its task. That happens when another task drops a failed connection
    (endpoint failover). Left alone, that stray cancellation would silently end
    whichever loop was waiting (anyio counts it as a cancelled task), so it is reported
    as the connection failure it is. A real cancellation of the task (anyio's cancel
    scopes call ``Task.cancel()``, so ``cancelling()`` is non-zero) propagates as is.
    """
    try:
        yield
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        raise ConnectionClosedUnderCall(
            f"etcd {what}: call cancelled by its closed connection to {endpoint}"
        ) from exc


def status(exc: BaseException) -> grpc.StatusCode | None:
    """Return the gRPC status behind ``exc`` (aetcd wraps AioRpcError as ``__cause__``)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, grpc.aio.AioRpcError):
            code: grpc.StatusCode = seen.code()
            return code
        seen = seen.__cause__
    return None


def details(exc: BaseException) -> str:
    """Return the gRPC error's details behind ``exc``, else ``exc`` itself as text."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, grpc.aio.AioRpcError):
            return str(seen.details() or "")
        seen = seen.__cause__
    return str(exc)


def retryable(exc: BaseException) -> bool:
    """Return whether another endpoint (or a fresh connection) may succeed after ``exc``."""
    if isinstance(
        exc,
        TimeoutError
        # grpc.aio refuses calls on a channel another task just closed after a failure.
        | grpc.aio.UsageError
        | aetcd.exceptions.ConnectionFailedError
        | aetcd.exceptions.ConnectionTimeoutError
        | aetcd.exceptions.UnauthenticatedError
        | MemberUnresponsive,
    ):
        return True
    return status(exc) in _RETRYABLE
