"""Errors of the Pacemaker reader.

All derive from :class:`~pgcm_common.errors.PacemakerError`::

PacemakerError
├── CrmMonParseError          crm_mon printed something we cannot trust
├── PromotableResourceNotFound the configured resource is not in a promotable clone
├── PacemakerCommandFailed    crm_mon / corosync-cfgtool exited non-zero or could not run
└── NodeAddressUnknown        no address for a node (static map or corosync)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import final

from pgcm_common.errors import PacemakerError

__all__ = [
    "CrmMonParseError",
    "NodeAddressUnknown",
    "PacemakerCommandFailed",
    "PromotableResourceNotFound",
]

# Long outputs are cut in messages: logs must stay readable, the attributes keep it all.
_MESSAGE_EXCERPT = 2000


@final
class CrmMonParseError(PacemakerError):
    """The ``crm_mon`` XML is malformed, hostile or not what Pacemaker prints."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"cannot parse crm_mon XML: {problem}")


@final
class PromotableResourceNotFound(PacemakerError):
    """The configured resource is missing from the status, or is not a promotable clone."""

    def __init__(self, resource_id: str, problem: str) -> None:
        self.resource_id = resource_id
        self.problem = problem
        super().__init__(f"resource {resource_id!r}: {problem}")


@final
class PacemakerCommandFailed(PacemakerError):
    """A Pacemaker or Corosync tool could not be run or exited non-zero."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int | None,
        stderr: str,
        detail: str = "",
    ) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.detail = detail
        status = "could not be started" if returncode is None else f"exited {returncode}"
        parts = [f"{' '.join(self.argv)} {status}"]
        if detail:
            parts.append(detail[:_MESSAGE_EXCERPT])
        if stderr.strip():
            parts.append(f"stderr: {stderr.strip()[:_MESSAGE_EXCERPT]}")
        super().__init__("; ".join(parts))


@final
class NodeAddressUnknown(PacemakerError):
    """No address is known for a cluster node."""

    def __init__(self, node: str, problem: str) -> None:
        self.node = node
        self.problem = problem
        super().__init__(f"no address for node {node!r}: {problem}")
