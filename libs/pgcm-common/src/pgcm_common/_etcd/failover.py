"""Requests that must not be sent twice at once: one endpoint at a time, in turn.

Writes and watch set-ups go to the connection in use under a :class:`StallGuard`. A
retryable failure (see :func:`failures.retryable`) drops that connection and the request
is tried on the next endpoint, once per endpoint; only then does it fail with
``EtcdUnavailable``. A retried write whose response was lost can apply twice: ``put_if``
callers read back to be sure (the lock does).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pgcm_common._etcd.endpoints import EndpointPool
from pgcm_common._etcd.failures import ConnectionClosedUnderCall, details, retryable
from pgcm_common._etcd.stall import StallGuard
from pgcm_common._etcd.transport import EndpointClient
from pgcm_common.errors import EtcdError, EtcdUnavailable

__all__ = ["call_in_turn"]

_T = TypeVar("_T")


async def call_in_turn(
    pool: EndpointPool,
    guard: StallGuard,
    what: str,
    op: Callable[[EndpointClient], Awaitable[_T]],
) -> _T:
    """Run ``op`` on the connection in use, failing over to each endpoint once.

    Raises:
        EtcdError: etcd gave a definite answer (an error), or ``op`` raised one.
        EtcdUnavailable: no endpoint answered.
    """
    last: Exception | None = None
    for _ in range(pool.count):
        try:
            client = await pool.connected()
        except Exception as exc:
            if not retryable(exc):
                raise EtcdError(f"etcd {what} failed: {details(exc)}") from exc
            last = exc
            continue
        try:
            return await guard.run(client, functools.partial(op, client))
        except ConnectionClosedUnderCall as exc:
            last = exc  # whoever closed it already dropped it: the next try reconnects
            continue
        except EtcdError:
            raise
        except Exception as exc:
            if not retryable(exc):
                raise EtcdError(f"etcd {what} failed: {details(exc)}") from exc
            last = exc
            pool.drop(client, exc)
    raise EtcdUnavailable(f"etcd {what}: no endpoint answered ({pool.describe()})") from last
