from __future__ import annotations

import asyncio

import anyio
import pytest

from pgcm_common._etcd.failures import (
    ConnectionClosedUnderCall,
    foreign_cancellation_as_unavailable,
)


async def test_grpc_cancelling_a_call_is_reported_as_a_closed_connection() -> None:
    # What grpc.aio does when another task closes the channel under an awaited call.
    with (
        pytest.raises(ConnectionClosedUnderCall, match="closed connection to e1"),
        foreign_cancellation_as_unavailable("get", "e1"),
    ):
        raise asyncio.CancelledError


async def test_a_real_cancellation_of_the_task_still_propagates() -> None:
    reached_after = False
    with anyio.move_on_after(0.05) as scope:
        with foreign_cancellation_as_unavailable("get", "e1"):
            await anyio.sleep_forever()
        reached_after = True
    assert scope.cancelled_caught
    assert not reached_after
