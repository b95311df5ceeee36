"""A fake :class:`~pgcm_common.pacemaker.CrmMonReader` that returns whatever a test set."""

from __future__ import annotations

from pathlib import Path
from typing import final

from anyio.lowlevel import checkpoint

from pgcm_common.pacemaker import ClusterState, PacemakerError, parse_crm_mon

__all__ = ["FakeCrmMonReader", "state_from_file"]


def state_from_file(path: Path, *, resource_id: str) -> ClusterState:
    """Parse a saved ``crm_mon`` XML sample into a state, for seeding the fake."""
    return parse_crm_mon(path.read_bytes(), resource_id=resource_id)


@final
class FakeCrmMonReader:
    """Implements ``CrmMonReader``: each read returns the current state or raises the error.

    Tests change what the "cluster" says with :meth:`set_state` and :meth:`fail_with`;
    :attr:`reads` counts calls so a test can tell a poll happened.
    """

    def __init__(self, state: ClusterState | PacemakerError) -> None:
        self._outcome: ClusterState | PacemakerError = state
        self.reads = 0

    def set_state(self, state: ClusterState) -> None:
        """Make every later read return ``state``."""
        self._outcome = state

    def fail_with(self, error: PacemakerError) -> None:
        """Make every later read raise ``error`` (as a failing crm_mon would)."""
        self._outcome = error

    async def read_cluster_state(self) -> ClusterState:
        """Return the configured state, or raise the configured error.

        Raises:
            PacemakerError: when :meth:`fail_with` set one.
        """
        # A real read always yields to the event loop; so does the fake, so a test
        # cannot pass only because the reader never gave other tasks a turn.
        await checkpoint()
        self.reads += 1
        if isinstance(self._outcome, PacemakerError):
            raise self._outcome
        return self._outcome
