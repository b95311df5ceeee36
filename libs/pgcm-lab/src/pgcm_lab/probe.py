"""Bounded probes: a frozen component answers "no answer" instead of hanging the caller.

A SIGSTOPped PostgreSQL or PgBouncer still accepts connections (the kernel completes the
handshake into the listen backlog) and then never replies, so a plain ``psql`` waits
forever. ``pgcm-lab status`` exists for exactly the moments when something is stuck, so
each of its probes gets its own deadline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, Literal, TypeVar

import anyio

__all__ = ["NO_ANSWER", "PROBE_TIMEOUT_S", "NoAnswer", "bounded"]

T = TypeVar("T")
NoAnswer = Literal["no answer"]
NO_ANSWER: Final[NoAnswer] = "no answer"
# Long enough for a healthy psql or crm_mon inside a busy lab node (well under 1 s),
# short enough that a status with several frozen parts still returns in seconds.
PROBE_TIMEOUT_S: Final = 3.0


async def bounded(
    probe: Callable[[], Awaitable[T]], *, seconds: float = PROBE_TIMEOUT_S
) -> T | NoAnswer:
    """Return what ``probe()`` returns, or :data:`NO_ANSWER` when it takes over ``seconds``.

    Cancellation:
        The probe is cancelled at the deadline; ``anyio.run_process`` kills its child.
    """
    with anyio.move_on_after(seconds):
        return await probe()
    return NO_ANSWER
