"""Run one of Pacemaker's command-line tools (``crm_resource``, ``crm_attribute``).

Every call goes through :func:`pgcm_common.pacemaker.run_command`: no shell, a minimal
environment, and the tool's process group killed and reaped when the caller's deadline
cancels the call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import final

from pgcm_common.pacemaker import PacemakerCommandFailed, run_command

__all__ = ["ToolOptions", "run_tool"]


@final
@dataclass(frozen=True, slots=True)
class ToolOptions:
    """How to run a Pacemaker tool.

    Attributes:
        command_prefix: argv run before the tool, e.g. ``("nsenter", "-t", "42", "--")``.
        kill_grace: how long to wait for a killed tool to be reaped.
    """

    command_prefix: tuple[str, ...] = ()
    kill_grace: timedelta = field(default=timedelta(seconds=2))


async def run_tool(options: ToolOptions, executable: str, *args: str) -> None:
    """Run ``executable args...`` and return once it exited 0.

    Raises:
        PacemakerCommandFailed: the tool could not run or exited non-zero.

    Cancellation:
        The caller bounds the call; the tool is killed and reaped on cancellation.
    """
    argv = (*options.command_prefix, executable, *args)
    output = await run_command(argv, kill_grace=options.kill_grace)
    if output.returncode != 0:
        raise PacemakerCommandFailed(output.argv, output.returncode, output.stderr_text)
