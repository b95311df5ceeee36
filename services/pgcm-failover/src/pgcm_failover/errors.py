"""Errors of pgcm-failover.

The tree::

    PgcmError (pgcm_common.errors)
    └── FailoverError
        ├── ClientUnhealthy       a supervise endpoint is not HEALTHY; nothing was changed
        ├── ClientsFailed         a fan-out step failed; every endpoint's error is kept
        ├── FailoverAborted       pre-flight refused, or the cluster did not follow in time
        ├── CleanupRefused        ``cleanup`` will not touch a switchover that is still running
        └── SuperviseError        one supervise endpoint answered with an error status
            ├── SuperviseUnavailable    not reachable (connection refused, reset, UNAVAILABLE)
            ├── SuperviseUnauthorized   UNAUTHENTICATED / PERMISSION_DENIED (token, mTLS)
            ├── SuperviseRefused        the server refused the request (FAILED_PRECONDITION, ...)
            └── SuperviseTooOld         UNIMPLEMENTED: the server predates a pgcm extension

A ``DEADLINE_EXCEEDED`` answer (e.g. "exceeded pause timeout") becomes the built-in
:class:`TimeoutError`, so it reads the same as a local ``fail_after``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import final

from pgcm_common.errors import FailoverError

__all__ = [
    "CleanupRefused",
    "ClientUnhealthy",
    "ClientsFailed",
    "FailoverAborted",
    "SuperviseError",
    "SuperviseRefused",
    "SuperviseTooOld",
    "SuperviseUnauthorized",
    "SuperviseUnavailable",
]


@final
class ClientUnhealthy(FailoverError):
    """Some supervise endpoints did not answer HEALTHY."""

    def __init__(
        self, endpoints: Sequence[str], reasons: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        self.endpoints = tuple(endpoints)
        self.reasons = {ep: tuple(r) for ep, r in (reasons or {}).items()}
        parts = []
        for endpoint in self.endpoints:
            why = self.reasons.get(endpoint, ())
            parts.append(f"{endpoint} ({'; '.join(why)})" if why else endpoint)
        super().__init__(f"unhealthy supervise endpoints: {', '.join(parts)}")


@final
class ClientsFailed(FailoverError):
    """A fan-out operation failed on one or more endpoints (never "last error wins")."""

    def __init__(self, operation: str, failures: Mapping[str, Exception]) -> None:
        self.operation = operation
        self.failures = dict(failures)
        detail = "; ".join(
            f"{ep}: {str(exc) or type(exc).__name__}" for ep, exc in self.failures.items()
        )
        super().__init__(f"{operation} failed on {len(self.failures)} endpoint(s): {detail}")


@final
class FailoverAborted(FailoverError):
    """The switchover was stopped on purpose: pre-flight refused or the cluster did not follow."""


@final
class CleanupRefused(FailoverError):
    """``cleanup`` refused to act: a live switchover still holds the lock."""


class SuperviseError(FailoverError):
    """A supervise endpoint answered a call with an error.

    Attributes:
        endpoint: the endpoint (``host:port``).
        operation: the rpc (``pause``, ``migrate``, ...).
        status: the gRPC status name, or None when no status was received.
        detail: the server's message.
    """

    def __init__(self, endpoint: str, operation: str, status: str | None, detail: str) -> None:
        self.endpoint = endpoint
        self.operation = operation
        self.status = status
        self.detail = detail
        shown = f"{status}: {detail}" if status else detail
        super().__init__(f"{operation} on {endpoint}: {shown}")


@final
class SuperviseUnavailable(SuperviseError):
    """The endpoint could not be reached or dropped the connection."""


@final
class SuperviseUnauthorized(SuperviseError):
    """The endpoint refused our credentials (bearer token or client certificate)."""


@final
class SuperviseRefused(SuperviseError):
    """The endpoint understood the request and refused it."""


@final
class SuperviseTooOld(SuperviseError):
    """The endpoint does not implement an rpc this command needs (a pgcm extension)."""
