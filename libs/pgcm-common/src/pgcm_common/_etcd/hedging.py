"""Idempotent requests (reads, lease refreshes), hedged: the first endpoint to answer wins.

The request goes to the connection in use. Whenever no answer came within
``hedge_delay`` (or an attempt failed), the same request is also sent to the next
endpoint on a connection of its own, until every endpoint was asked once. The first
answer cancels the others; if it came from a hedge connection, the pool adopts that
connection (:meth:`EndpointPool.adopt`), so later calls (and watches) go to the member
that answered; other hedges are closed. Only requests that may apply twice go here:
writes go through :mod:`failover`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Generic, TypeVar, final

import anyio
import anyio.abc

from pgcm_common._etcd.endpoints import EndpointPool
from pgcm_common._etcd.failures import ConnectionClosedUnderCall, details, retryable
from pgcm_common._etcd.transport import EndpointClient
from pgcm_common.errors import EtcdError, EtcdUnavailable

__all__ = ["hedged_read"]

_T = TypeVar("_T")


async def hedged_read(
    pool: EndpointPool,
    what: str,
    op: Callable[[EndpointClient], Awaitable[_T]],
    *,
    hedge_delay: timedelta,
    request_timeout: timedelta,
) -> _T:
    """Run the idempotent ``op``, hedged over the endpoints (see the module docstring).

    Raises:
        EtcdError: an endpoint gave a definite, non-retryable answer (an error).
        EtcdUnavailable: no endpoint answered.
    """
    race = _HedgedRead(
        pool,
        what,
        op,
        hedge_delay_s=hedge_delay.total_seconds(),
        request_timeout_s=request_timeout.total_seconds(),
    )
    return await race.run()


@final
class _HedgedRead(Generic[_T]):
    """One hedged read: attempts race, first answer wins.

    Attempt 0 uses the pool's connection; attempt ``k`` a connection of its own to the
    ``k``-th endpoint after it. While some attempt is still waiting (a frozen member
    holds it), hedges that failed transiently are asked again ``hedge_delay`` after
    their failure, until ``request_timeout`` after the start: freezing the Raft leader
    makes the other members answer "leader changed" until they elected a new one, about
    a second. Never sooner: a stopped member refuses a connection at once, and asking
    it again at once would spin on ``connect`` for as long as a member without quorum
    holds attempt 0, starving the event loop (health answers then missed their
    deadline).
    """

    def __init__(
        self,
        pool: EndpointPool,
        what: str,
        op: Callable[[EndpointClient], Awaitable[_T]],
        *,
        hedge_delay_s: float,
        request_timeout_s: float,
    ) -> None:
        self._pool = pool
        self._what = what
        self._op = op
        self._delay_s = hedge_delay_s
        self._timeout_s = request_timeout_s
        # Offsets count from the endpoint in use when the read started, even if a
        # failure elsewhere moves the pool on meanwhile.
        self._count = pool.count
        self._start = pool.position
        self._won: list[tuple[EndpointClient, _T]] = []
        self._failures: list[Exception] = []
        self._fatal: list[Exception] = []
        self._hedges: dict[int, EndpointClient] = {}
        self._shared: list[EndpointClient] = []
        self._retry: list[tuple[float, int]] = []  # (when it may be asked again, offset)
        self._in_flight = 0
        self._failed = anyio.Event()

    async def run(self) -> _T:
        give_up_at = anyio.current_time() + self._timeout_s
        try:
            async with anyio.create_task_group() as tg:
                pending = list(range(self._count))
                while pending or (self._in_flight and anyio.current_time() < give_up_at):
                    if self._in_flight:
                        with anyio.move_on_after(self._wait_s(more_endpoints=bool(pending))):
                            await self._failed.wait()
                    self._failed = anyio.Event()
                    if pending:
                        self._launch(tg, pending.pop(0))
                    elif self._in_flight:
                        self._launch_due_retries(tg)
            if self._won:
                return self._settle(*self._won[0])
        finally:
            for hedge in self._hedges.values():
                hedge.close()
        if self._fatal:
            raise self._fatal[0]
        last = self._failures[-1] if self._failures else None
        raise EtcdUnavailable(
            f"etcd {self._what}: no endpoint answered ({self._pool.describe()})"
        ) from last

    def _settle(self, client: EndpointClient, result: _T) -> _T:
        """Adopt the winning hedge connection (if it is one) and return its answer."""
        replaced = self._shared[0] if self._shared else None
        for offset, hedge in list(self._hedges.items()):
            if hedge is client and self._pool.adopt(client, replaced):
                del self._hedges[offset]
        return result

    def _wait_s(self, *, more_endpoints: bool) -> float:
        """How long to wait for an answer (or a failure) before asking anyone else."""
        if more_endpoints or not self._retry:
            return self._delay_s
        return max(0.0, min(due for due, _ in self._retry) - anyio.current_time())

    def _launch_due_retries(self, tg: anyio.abc.TaskGroup) -> None:
        now = anyio.current_time()
        due = [offset for when, offset in self._retry if when <= now]
        self._retry = [(when, offset) for when, offset in self._retry if when > now]
        for offset in due:
            self._launch(tg, offset)

    def _launch(self, tg: anyio.abc.TaskGroup, offset: int) -> None:
        self._in_flight += 1
        tg.start_soon(self._attempt, offset, tg.cancel_scope)

    async def _attempt(self, offset: int, race: anyio.CancelScope) -> None:
        try:
            await self._ask(offset, race)
        finally:
            self._in_flight -= 1
            self._failed.set()  # do not wait out hedge_delay: ask the next endpoint now

    async def _ask(self, offset: int, race: anyio.CancelScope) -> None:
        client: EndpointClient | None = None
        try:
            client = await self._connection(offset)
            result = await self._op(client)
        except ConnectionClosedUnderCall as exc:
            self._failures.append(exc)  # whoever closed it dropped it: the others go on
        except EtcdError as exc:
            self._fatal.append(exc)  # etcd's own answer, such as an expired lease
            race.cancel()
        except Exception as exc:  # noqa: BLE001 - classified and kept for the caller
            if not retryable(exc):
                error = EtcdError(f"etcd {self._what} failed: {details(exc)}")
                error.__cause__ = exc
                self._fatal.append(error)
                race.cancel()
                return
            self._failures.append(exc)
            if offset == 0:
                if client is not None:
                    self._pool.drop(client, exc)
            else:
                self._retry.append((anyio.current_time() + self._delay_s, offset))
        else:
            self._won.append((client, result))
            race.cancel()

    async def _connection(self, offset: int) -> EndpointClient:
        if offset == 0:
            client = await self._pool.connected()
            self._shared.append(client)
            return client
        hedge = self._hedges.get(offset)
        if hedge is None:
            index = (self._start + offset) % self._count
            hedge = self._hedges[offset] = await self._pool.dial(index)
        return hedge
