"""Telling a frozen member from a slow one before a request's own deadline runs out.

A frozen member (SIGSTOP, a stuck VM) still has its TCP connections accepted by the
kernel, which buffers our requests, but nothing ever answers, so only timeouts tell.
Waiting for ``request_timeout`` on it made every caller with a shorter deadline
(supervise's health check) fail. A request that must not be sent twice at once (a write,
a watch set-up) is therefore watched by :class:`StallGuard`: after ``hedge_delay``
without an answer the member must answer a cheap local read, or the request is abandoned
on it. A member that is alive but slow (an election, a slow disk) answers that probe, so
its request is awaited as usual. An idle watch asks the same question (:func:`answers`)
when its stream stays silent: nothing else would notice its member froze.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar, final

import anyio

from pgcm_common._etcd.codec import b64
from pgcm_common._etcd.failures import NO_ANSWER, GatewayError, MemberUnresponsive
from pgcm_common._etcd.transport import EndpointClient

__all__ = ["StallGuard", "answers"]

_T = TypeVar("_T")

# Any key does for a liveness probe: a count-only serializable read of it is answered
# from the member's own store, without a Raft round, so even a member that lost its
# leader answers at once; permission errors (RBAC) are answers too.
_PROBE = {"key": b64(b"\x00pgcm-liveness-probe"), "serializable": True, "count_only": True}


async def answers(client: EndpointClient, within: timedelta) -> bool:
    """Return whether the member answers a local read within ``within``.

    The probe goes on a connection of its own (the one in use may be the stalled one).
    """
    try:
        await client.call("/v3/kv/range", _PROBE, timeout_s=within.total_seconds())
    except GatewayError as exc:
        return exc.code not in NO_ANSWER
    except Exception:  # noqa: BLE001 - no answer in time, a broken or closed connection
        return False
    return True


@final
class StallGuard:
    """Runs requests on one endpoint, abandoning them if the member stopped answering."""

    def __init__(self, hedge_delay: timedelta) -> None:
        self._delay = hedge_delay

    async def run(self, client: EndpointClient, work: Callable[[], Awaitable[_T]]) -> _T:
        """Await ``work`` on ``client``; abandon it if it stalls on an unresponsive member.

        After ``hedge_delay`` without an answer the member is probed (:func:`answers`);
        ``work`` is cancelled only when the probe is not answered either, so a slow but
        live member is still waited for.

        Raises:
            MemberUnresponsive: the member answered neither ``work`` nor the probe.
        """
        stalled = False
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:

            async def watchdog() -> None:
                nonlocal stalled
                await anyio.sleep(self._delay.total_seconds())
                if not await answers(client, self._delay):
                    stalled = True
                    tg.cancel_scope.cancel()

            tg.start_soon(watchdog)
            try:
                result = await work()
            except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group
                failure = exc
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if stalled:
            raise MemberUnresponsive(client.endpoint, 2 * self._delay.total_seconds())
        return result
