"""Hedged reads at the transport seam: who is asked, and how often.

The endpoint clients here are scripted stand-ins for :class:`EndpointClient`: one member
that never answers (alive but without quorum), others that refuse every connection at
once (stopped). That is etcd with two of three members down, seen from one client.
"""

from __future__ import annotations

import ssl
from collections import Counter
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any, final

import anyio
import pytest

from pgcm_common._etcd.codec import JsonObject
from pgcm_common._etcd.endpoints import EndpointPool
from pgcm_common._etcd.hedging import hedged_read
from pgcm_common._etcd.settings import EtcdEndpoint, EtcdSettings
from pgcm_common._etcd.transport import AnswerStream, EndpointClient
from pgcm_common.errors import EtcdUnavailable

HEDGE_DELAY = timedelta(milliseconds=50)
REQUEST_TIMEOUT = timedelta(milliseconds=600)


@final
class ScriptedMember:
    """An endpoint client whose member hangs, refuses connections, or answers."""

    def __init__(
        self, endpoint: EtcdEndpoint, index: int, behaviour: str, log: Counter[int]
    ) -> None:
        self.endpoint = endpoint
        self.index = index
        self._behaviour = behaviour
        self._connects = log

    async def connect(self) -> None:
        self._connects[self.index] += 1
        if self._behaviour == "refuses":
            raise ConnectionRefusedError(111, "Connection refused")

    def close(self) -> None:
        pass

    async def call(
        self, path: str, message: Mapping[str, Any], *, timeout_s: float | None = None
    ) -> JsonObject:
        if self._behaviour == "hangs":
            await anyio.sleep_forever()
        return {"path": path}

    def stream(
        self, path: str, message: Mapping[str, Any]
    ) -> AbstractAsyncContextManager[AnswerStream]:
        raise NotImplementedError


def pool_of(behaviours: list[str]) -> tuple[EndpointPool, Counter[int]]:
    connects: Counter[int] = Counter()
    settings = EtcdSettings(endpoints=[f"127.0.0.1:{2379 + i}" for i in range(len(behaviours))])

    def factory(
        endpoint: EtcdEndpoint, settings: EtcdSettings, tls: ssl.SSLContext | None, *, index: int
    ) -> EndpointClient:
        return ScriptedMember(endpoint, index, behaviours[index], connects)

    return EndpointPool(settings, None, factory), connects


async def read(pool: EndpointPool) -> JsonObject:
    async def op(client: EndpointClient) -> JsonObject:
        return await client.call("/v3/kv/range", {})

    return await hedged_read(
        pool, "get", op, hedge_delay=HEDGE_DELAY, request_timeout=REQUEST_TIMEOUT
    )


async def test_stopped_members_are_asked_again_at_most_once_per_hedge_delay() -> None:
    pool, connects = pool_of(["hangs", "refuses", "refuses"])
    with anyio.move_on_after(REQUEST_TIMEOUT.total_seconds() * 2):
        with pytest.raises(EtcdUnavailable, match="no endpoint answered"):
            await read(pool)
    # Within request_timeout each refusing member may be asked once at first and then
    # once per hedge_delay: about 12 times. Asked again at once, it was asked thousands
    # of times, on a busy loop.
    most = REQUEST_TIMEOUT / HEDGE_DELAY + 2
    assert connects[0] == 1
    assert 2 <= connects[1] <= most
    assert 2 <= connects[2] <= most


async def test_a_member_that_answers_wins_over_one_that_hangs() -> None:
    pool, connects = pool_of(["hangs", "refuses", "answers"])
    with anyio.fail_after(REQUEST_TIMEOUT.total_seconds() * 2):
        assert await read(pool) == {"path": "/v3/kv/range"}
    assert pool.endpoint.port == 2381  # adopted: later calls go to the member that answered
    assert connects[2] == 1


async def test_when_every_member_refuses_the_read_fails_at_once() -> None:
    pool, connects = pool_of(["refuses", "refuses", "refuses"])
    with anyio.fail_after(HEDGE_DELAY.total_seconds() * 10):
        with pytest.raises(EtcdUnavailable, match="no endpoint answered"):
            await read(pool)
    assert sum(connects.values()) == 3
