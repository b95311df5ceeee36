"""The metrics HTTP endpoint both daemons serve (a real listener on loopback)."""

from __future__ import annotations

from functools import partial

import anyio
import pytest
from prometheus_client import CollectorRegistry, Counter

from pgcm_common.errors import ConfigError
from pgcm_common.metrics import serve_metrics


async def _request(port: int, request: bytes) -> str:
    stream = await anyio.connect_tcp("127.0.0.1", port)
    response = b""
    async with stream:
        await stream.send(request)
        try:
            while True:
                response += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
    return response.decode()


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("pgcm_test_things", "Things counted.", registry=registry).inc(3)
    return registry


async def test_get_returns_the_exposition_and_other_methods_405() -> None:
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(5):
            port = await tg.start(partial(serve_metrics, _registry(), "127.0.0.1:0"))
            text = await _request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            refused = await _request(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        tg.cancel_scope.cancel()
    assert text.startswith("HTTP/1.1 200 OK")
    assert "pgcm_test_things_total 3.0" in text
    assert refused.startswith("HTTP/1.1 405")


async def test_cancelling_the_task_group_closes_the_listener() -> None:
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(5):
            port = await tg.start(partial(serve_metrics, _registry(), "127.0.0.1:0"))
        tg.cancel_scope.cancel()
    with anyio.fail_after(5), pytest.raises(OSError, match="connection attempts failed"):
        await anyio.connect_tcp("127.0.0.1", port)


async def test_an_address_in_use_is_a_config_error_naming_metrics_address() -> None:
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(5):
            port = await tg.start(partial(serve_metrics, _registry(), "127.0.0.1:0"))
            with pytest.raises(ConfigError, match="cannot listen") as info:
                await tg.start(partial(serve_metrics, _registry(), f"127.0.0.1:{port}"))
        tg.cancel_scope.cancel()
    assert info.value.key == "metrics_address"
