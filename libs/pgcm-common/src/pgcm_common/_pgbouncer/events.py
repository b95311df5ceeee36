"""Log events both admin console clients emit, under the original's names."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from structlog.typing import FilteringBoundLogger

__all__ = ["logged_reload"]


async def logged_reload(log: FilteringBoundLogger, send: Callable[[], Awaitable[object]]) -> None:
    """Send RELOAD with ``send``; log ``pgbouncer.reload_configuration`` with its duration.

    Raises:
        Whatever ``send`` raises (then nothing is logged).
    """
    started = time.monotonic()
    await send()
    log.info(
        "pgbouncer.reload_configuration",
        msg="PgBouncer reloaded its configuration",
        elapsed=time.monotonic() - started,
    )
