"""Telling a frozen member from a slow one before a request's own deadline runs out.

A frozen member (SIGSTOP, a stuck VM) still has its TCP connections accepted by the
kernel, which buffers our requests, but nothing ever answers, so only timeouts tell.
Waiting for ``request_timeout`` on it made every caller with a shorter deadline
(supervise's health check) fail. A request that must not be sent twice at once (a write,
a watch set-up) is therefore watched by :class:`StallGuard`: after ``hedge_delay``
without an answer the member must answer a cheap local read, or the request is abandoned
on it. A member that is alive but slow (an election, a slow disk) answers that probe, so
its request is awaited as usual.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar, final

import aetcd.rpc
import anyio
import grpc.aio

from pgcm_common._etcd.channel import ChannelClient
from pgcm_common._etcd.failures import (
    NO_ANSWER,
    ConnectionClosedUnderCall,
    MemberUnresponsive,
    foreign_cancellation_as_unavailable,
)
from pgcm_common.errors import EtcdUnavailable

__all__ = ["StallGuard"]

_T = TypeVar("_T")

# Any key does for a liveness probe: a count-only serializable read of it is answered
# from the member's own store, without a Raft round, so even a member that lost its
# leader answers at once; permission errors (RBAC) are answers too.
_PROBE_KEY = b"\x00pgcm-liveness-probe"


@final
class StallGuard:
    """Runs requests on one connection, abandoning them if the member stopped answering."""

    def __init__(self, hedge_delay: timedelta) -> None:
        self._delay_s = hedge_delay.total_seconds()

    async def answers(self, client: ChannelClient) -> bool:
        """Return whether the member answers a local read within ``hedge_delay``.

        Bounded by gRPC's own deadline, not a cancel scope: grpc.aio replaces the
        cancellation of a call by one anyio does not recognise as its own.
        """
        request = aetcd.rpc.RangeRequest(key=_PROBE_KEY, serializable=True, count_only=True)
        try:
            with foreign_cancellation_as_unavailable("probe", client.endpoint):
                await client.kvstub.Range(request, timeout=self._delay_s, metadata=client.metadata)
        except grpc.aio.AioRpcError as exc:
            return exc.code() not in NO_ANSWER
        except (grpc.aio.UsageError, EtcdUnavailable):
            return False  # the connection was closed meanwhile
        return True

    async def run(self, client: ChannelClient, work: Callable[[], Awaitable[_T]]) -> _T:
        """Await ``work`` on ``client``; abandon it if it stalls on an unresponsive member.

        After ``hedge_delay`` without an answer the member is probed (:meth:`answers`)
        on the same connection; ``work`` is cancelled only when the probe is not
        answered either, so a slow but live member is still waited for. Work and probe
        run in child tasks: a gRPC call cancelled under a cancel scope ends with a
        cancellation anyio does not recognise, which a child task absorbs.

        Raises:
            MemberUnresponsive: the member answered neither ``work`` nor the probe.
            ConnectionClosedUnderCall: another task closed the connection under us.
        """
        results: list[_T] = []
        errors: list[Exception] = []
        stalled: list[bool] = []

        async def attempt(race: anyio.CancelScope) -> None:
            try:
                with foreign_cancellation_as_unavailable("request", client.endpoint):
                    results.append(await work())
            except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group
                errors.append(exc)
            race.cancel()

        async def watchdog(race: anyio.CancelScope) -> None:
            await anyio.sleep(self._delay_s)
            if not await self.answers(client):
                stalled.append(True)
                race.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(attempt, tg.cancel_scope)
            tg.start_soon(watchdog, tg.cancel_scope)
        if results:
            return results[0]
        if errors:
            raise errors[0]
        if stalled:
            raise MemberUnresponsive(client.endpoint, 2 * self._delay_s)
        # Both children ended cancelled without our scope or an outer one asking:
        # grpc.aio cancelled the call (its channel was closed by another task).
        raise ConnectionClosedUnderCall(f"etcd request to {client.endpoint}: call cancelled")
