from __future__ import annotations

import os
from functools import partial

import anyio
import prometheus_client  # noqa: F401 - first import outside the loop (blockbuster): metrics load it lazily
import pytest

from pgcm_common.hostport import parse_bind_address
from pgcm_common.metrics import serve_metrics
from pgcm_common.pacemaker import CorosyncNodeAddresses, StaticNodeAddresses
from pgcm_common.settings import load_settings
from pgcm_supervise.app import build_crm_mon, build_resolver
from pgcm_supervise.metrics import SuperviseMetrics
from pgcm_supervise.settings import SuperviseSettings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("PGCM_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("overrides", "kind"),
    [
        ({}, CorosyncNodeAddresses),
        ({"node_addresses": {"n1": "10.0.0.1"}}, StaticNodeAddresses),
        (
            {"node_addresses": {"n1": "10.0.0.1"}, "address_source": "corosync"},
            CorosyncNodeAddresses,
        ),
        ({"node_addresses": {"n1": "10.0.0.1"}, "address_source": "static"}, StaticNodeAddresses),
    ],
)
def test_address_source_picks_the_resolver(overrides: dict[str, object], kind: type) -> None:
    settings, _ = load_settings(SuperviseSettings, overrides=overrides)
    assert isinstance(build_resolver(settings), kind)


def test_crm_mon_reader_uses_the_settings() -> None:
    settings, _ = load_settings(
        SuperviseSettings,
        overrides={
            "resource_id": "pgsql",
            "command_prefix": ["nsenter", "--"],
            "crm_mon_path": "x",
        },
    )
    options = build_crm_mon(settings).options
    assert (options.resource_id, options.command_prefix, options.executable) == (
        "pgsql",
        ("nsenter", "--"),
        "x",
    )
    assert options.timeout == settings.crm_mon_timeout


@pytest.mark.parametrize(
    ("text", "expected"),
    [(":9187", ("0.0.0.0", 9187)), ("127.0.0.1:1", ("127.0.0.1", 1)), ("[::1]:80", ("::1", 80))],
)
def test_metrics_address_parses(text: str, expected: tuple[str, int]) -> None:
    parsed = parse_bind_address(text)
    assert (parsed.bind_host, parsed.port) == expected


async def test_metrics_endpoint_serves_the_exposition() -> None:
    metrics = SuperviseMetrics()
    metrics.set_published_primary("n1", "10.0.0.11")
    metrics.set_published_primary("n2", "10.0.0.12")
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(5):
            assert metrics.registry is not None
            port = await tg.start(partial(serve_metrics, metrics.registry, "127.0.0.1:0"))
            stream = await anyio.connect_tcp("127.0.0.1", port)
            async with stream:
                await stream.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                body = b""
                try:
                    while True:
                        body += await stream.receive()
                except anyio.EndOfStream:
                    pass
        tg.cancel_scope.cancel()
    text = body.decode()
    assert text.startswith("HTTP/1.1 200 OK")
    assert 'pgcm_supervise_published_primary_info{address="10.0.0.12",node="n2"} 1.0' in text
    assert 'node="n1"' not in text
