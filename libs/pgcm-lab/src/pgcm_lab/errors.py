"""Errors of the lab driver.

::

PgcmError
└── LabError                 a lab step failed (message says which and why)
    ├── LabAlreadyUp         ``up`` found a running lab
    ├── LabNotUp             a command needs a running lab (or node)
    └── CommandFailed        a command inside the lab exited non-zero
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import final

from pgcm_common.errors import PgcmError

__all__ = ["CommandFailed", "LabAlreadyUp", "LabError", "LabNotUp"]


class LabError(PgcmError):
    """A lab operation failed."""


@final
class LabAlreadyUp(LabError):
    """``up`` found a running lab; it never starts a second one."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        super().__init__(f"a lab is already running (state in {state_dir}); run `pgcm-lab down`")


@final
class LabNotUp(LabError):
    """The lab, or the named node, is not running."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"{what} is not running")


@final
class CommandFailed(LabError):
    """A command exited non-zero; the message carries the tail of its output."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.output = output
        tail = "\n".join(output.strip().splitlines()[-8:])
        super().__init__(f"command {' '.join(argv)!r} exited {returncode}: {tail}")
