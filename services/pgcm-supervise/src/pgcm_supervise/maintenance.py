"""Pacemaker's maintenance mode (the cluster property ``maintenance-mode``).

With it on, Pacemaker keeps running what runs but starts, stops, promotes and moves
nothing: the operator's window for work on the nodes. ``crm_attribute --type crm_config
--name maintenance-mode --update true|false`` sets it cluster-wide from any node.

:class:`MaintenanceControl` is the seam; :class:`CrmAttributeMaintenance` the real
adapter (a command prefix lets it run inside a namespace); :class:`FakeMaintenanceControl`
the fake used by the handler tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol, final

import structlog
from anyio.lowlevel import checkpoint

from pgcm_common.pacemaker import PacemakerCommandFailed, PacemakerError, run_command

__all__ = [
    "MAX_REASON_LENGTH",
    "CrmAttributeMaintenance",
    "CrmAttributeOptions",
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
@dataclass(frozen=True, slots=True)
class CrmAttributeOptions:
    """How to run ``crm_attribute``.

    Attributes:
        command_prefix: argv run before the tool, e.g. ``("nsenter", "-t", "42", "--")``.
        executable: the ``crm_attribute`` program.
        kill_grace: how long to wait for a killed tool to be reaped.
    """

    command_prefix: tuple[str, ...] = ()
    executable: str = "crm_attribute"
    kill_grace: timedelta = field(default=timedelta(seconds=2))


@final
class CrmAttributeMaintenance:
    """The real :class:`MaintenanceControl`: runs ``crm_attribute`` without a shell.

    Cancellation: the caller bounds each call; the tool's process group is killed and
    reaped when the call is cancelled (``pgcm_common.pacemaker.run_command``).
    """

    def __init__(self, options: CrmAttributeOptions | None = None) -> None:
        self._options = options or CrmAttributeOptions()

    async def set_maintenance(self, *, enabled: bool) -> None:
        """Run ``crm_attribute --type crm_config --name maintenance-mode --update <bool>``.

        Raises:
            PacemakerCommandFailed: crm_attribute could not run or exited non-zero.
        """
        value = "true" if enabled else "false"
        argv = (
            *self._options.command_prefix,
            self._options.executable,
            "--type",
            "crm_config",
            "--name",
            "maintenance-mode",
            "--update",
            value,
        )
        output = await run_command(argv, kill_grace=self._options.kill_grace)
        if output.returncode != 0:
            raise PacemakerCommandFailed(output.argv, output.returncode, output.stderr_text)
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
