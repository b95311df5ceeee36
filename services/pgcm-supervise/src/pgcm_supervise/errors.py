"""Errors raised by pgcm-supervise's failover API.

Every class derives from :class:`~pgcm_common.errors.PgcmError`; ``server.py`` holds the
one table that maps them to gRPC statuses::

    PgcmError
    ├── InvalidRequest              a request field is out of range (INVALID_ARGUMENT)
    ├── PgBouncerError
    │   └── PgBouncersFailed        (pgcm_common.pausing) PAUSE/RESUME failed on some local
    │                               PgBouncers (UNAVAILABLE)
    ├── PacemakerError
    │   ├── ClusterWithoutQuorum    this node's partition has no quorum (FAILED_PRECONDITION)
    │   ├── NoMigrationTarget       no node may take the primary role (FAILED_PRECONDITION)
    │   └── UnknownMigrationTarget  the caller named a node Pacemaker does not know
    │                               (INVALID_ARGUMENT)
    └── PauseSuperseded             (pgcm_common.pausing) a resume cancelled a pause still
                                    waiting (ABORTED)
"""

from __future__ import annotations

from typing import final

from pgcm_common.errors import PacemakerError, PgcmError
from pgcm_common.pausing import PauseSuperseded, PgBouncersFailed
from pgcm_common.untrusted import excerpt

__all__ = [
    "ClusterWithoutQuorum",
    "InvalidRequest",
    "NoMigrationTarget",
    "PauseSuperseded",
    "PgBouncersFailed",
    "UnknownMigrationTarget",
]


@final
class InvalidRequest(PgcmError):
    """A request field has a value the server cannot act on."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"invalid {field}: {problem}")


@final
class ClusterWithoutQuorum(PacemakerError):
    """This node's Pacemaker partition has no quorum: nothing may be moved from here."""

    def __init__(self) -> None:
        super().__init__("this node's Pacemaker partition has no quorum")


@final
class NoMigrationTarget(PacemakerError):
    """No node can take the primary role (or the named one cannot)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"no suitable migration target: {problem}")


@final
class UnknownMigrationTarget(PacemakerError):
    """The caller named a node that is not in the cluster."""

    def __init__(self, node: str, known: tuple[str, ...]) -> None:
        self.node = node
        self.known = known
        # The name came from the caller: quoted short and escaped, never whole.
        super().__init__(f"node {excerpt(node)} is not in the cluster (known: {', '.join(known)})")
