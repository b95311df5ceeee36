"""Errors of pgcm-failover.

The tree::

    PgcmError (pgcm_common.errors)
    └── FailoverError
        ├── ClientUnhealthy   a supervise endpoint is not HEALTHY; nothing was changed
        ├── ClientsFailed     a fan-out step failed; every endpoint's error is kept
        └── FailoverAborted   pre-flight refused, or the cluster did not follow in time
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import final

from pgcm_common.errors import FailoverError

__all__ = ["ClientUnhealthy", "ClientsFailed", "FailoverAborted"]


@final
class ClientUnhealthy(FailoverError):
    """Some supervise endpoints did not answer HEALTHY."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        self.endpoints = tuple(endpoints)
        super().__init__(f"unhealthy supervise endpoints: {', '.join(self.endpoints)}")


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
