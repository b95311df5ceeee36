"""Pacemaker's maintenance mode (the cluster property ``maintenance-mode``).

With it on, Pacemaker keeps running what runs but starts, stops, promotes and moves
nothing: the operator's window for work on the nodes. ``crm_attribute --type crm_config
--name maintenance-mode --update true|false`` sets it cluster-wide from any node.

:class:`MaintenanceControl` is the seam; :class:`CrmAttributeMaintenance` the real
adapter (a command prefix lets it run inside a namespace); :class:`FakeMaintenanceControl`
the fake used by the handler tests.
"""

from __future__ import annotations

from typing import Protocol, final

import structlog
from anyio.lowlevel import checkpoint

from pgcm_common.pacemaker import PacemakerError
from pgcm_supervise.pacemaker_tool import ToolOptions, run_tool

__all__ = [
    "MAX_REASON_LENGTH",
    "CrmAttributeMaintenance",
    "FakeMaintenanceControl",
    "MaintenanceControl",
]

_log = structlog.get_logger("pgcm_supervise.maintenance")

MAX_REASON_LENGTH = 256
"""Longest ``reason`` and ``requested_by`` a request may carry (characters)."""


class MaintenanceControl(Protocol):
    """Turns Pacemaker's cluster-wide maintenance mode on and off."""

    async def set_maintenance(self, *, enabled: bool) -> None:
        """Set ``maintenance-mode`` to ``enabled`` (already so is success).

        Raises:
            PacemakerError: the tool failed; nothing was changed.
        """
        ...


@final
class CrmAttributeMaintenance:
    """The real :class:`MaintenanceControl`: runs ``crm_attribute`` without a shell.

    Cancellation: the caller bounds each call; the tool's process group is killed and
    reaped when the call is cancelled (``pgcm_common.pacemaker.run_command``).
    """

    def __init__(
        self, options: ToolOptions | None = None, *, executable: str = "crm_attribute"
    ) -> None:
        self._options = options or ToolOptions()
        self._executable = executable

    async def set_maintenance(self, *, enabled: bool) -> None:
        """Run ``crm_attribute --type crm_config --name maintenance-mode --update <bool>``.

        Raises:
            PacemakerCommandFailed: crm_attribute could not run or exited non-zero.
        """
        value = "true" if enabled else "false"
        await run_tool(
            self._options,
            self._executable,
            *("--type", "crm_config", "--name", "maintenance-mode", "--update", value),
        )
        _log.info("pacemaker.maintenance.set", enabled=enabled)


@final
class FakeMaintenanceControl:
    """In-memory :class:`MaintenanceControl`: ``enabled`` is the property, ``error`` fails."""

    def __init__(self) -> None:
        self.enabled = False
        self.calls: list[bool] = []
        self.error: PacemakerError | None = None

    async def set_maintenance(self, *, enabled: bool) -> None:
        """Record the change; raise the configured error instead when there is one."""
        await checkpoint()
        if self.error is not None:
            raise self.error
        self.calls.append(enabled)
        self.enabled = enabled
