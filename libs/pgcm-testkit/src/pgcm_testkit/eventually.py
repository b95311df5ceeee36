"""Wait for a condition in async tests without sleeping for a fixed time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio


async def eventually(predicate: Callable[[], Awaitable[bool]], *, interval_s: float = 0.05) -> None:
    """Poll ``predicate`` until it returns True.

    The caller bounds the wait: ``with anyio.fail_after(5): await eventually(pred)``.

    Cancellation:
        Cancelled by the caller's scope; nothing to clean up.
    """
    while not await predicate():  # noqa: ASYNC110 - the condition lives outside our process
        await anyio.sleep(interval_s)
