"""What the daemons' metrics need in common.

* :class:`Discarded` stands in for every metric when nothing exports them: prometheus_client
  is imported only when a daemon serves metrics (``metrics_address``); without it, every
  metric accepts the same calls and keeps nothing (about 1.5 MB less resident memory).
* :class:`OptionalGauge` is a gauge whose series is absent until it has a value, so
  "unknown" or "never happened" is no series rather than a sentinel such as -1 or 0.
* :func:`register_build_info` adds ``pgcm_build_info{service, version}`` (value 1).
* :func:`serve_metrics` is the HTTP endpoint both daemons serve on ``metrics_address``.

Names follow Prometheus' conventions: base units with the unit as suffix
(``_seconds``), ``_total`` on counters (prometheus_client appends it), ``_info`` on
identity pseudo-metrics whose labels carry the information and whose value is 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Self, cast, final

import anyio
import structlog
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

from pgcm_common.errors import ConfigError
from pgcm_common.hostport import parse_bind_address

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector

__all__ = [
    "BUILD_INFO",
    "Discarded",
    "OptionalGauge",
    "distribution_version",
    "register_build_info",
    "serve_metrics",
]

_log = structlog.get_logger("pgcm.metrics")

# Bound on reading one scrape request: a client that never finishes its headers must not
# hold a task for ever.
_REQUEST_TIMEOUT_S = 5.0
_MAX_REQUEST_BYTES = 16_384

BUILD_INFO = "pgcm_build_info"


@final
class Discarded:
    """Stands in for any metric when nothing exports them (no ``metrics_address``)."""

    def labels(self, *_values: str, **_labels: str) -> Self:
        """Return itself: every series is discarded alike."""
        return self

    def inc(self, amount: float = 1) -> None:
        """Discard an increment."""

    def set(self, value: float) -> None:
        """Discard a value."""

    def clear(self) -> None:
        """Discard the end of a value."""

    def observe(self, amount: float) -> None:
        """Discard an observation."""

    def remove(self, *_values: str) -> None:
        """Discard a series removal."""


@final
class OptionalGauge:
    """An unlabelled gauge with no series until :meth:`set`, and none again after :meth:`clear`.

    prometheus_client's own gauge always exposes a value (0 before the first ``set``);
    a Prometheus rule cannot tell that 0 from a real one, so pgcm never exports it.
    """

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        """Register the gauge ``name`` in ``registry``."""
        self._name = name
        self._documentation = documentation
        self._value: float | None = None
        # The registry only calls describe() and collect(): no need to import the ABC.
        registry.register(cast("Collector", self))

    @property
    def value(self) -> float | None:
        """Return the current value, None when there is none."""
        return self._value

    def set(self, value: float) -> None:
        """Expose ``value`` from now on."""
        self._value = float(value)

    def clear(self) -> None:
        """Stop exposing a value (the state is unknown again)."""
        self._value = None

    def describe(self) -> Iterator[Metric]:
        """Yield the family without samples (for the registry's name clash check)."""
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415 - only when exported

        yield GaugeMetricFamily(self._name, self._documentation)

    def collect(self) -> Iterator[Metric]:
        """Yield the family, with its one sample when there is a value."""
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415 - only when exported

        family = GaugeMetricFamily(self._name, self._documentation)
        value = self._value  # read once: the scrape may run in another thread
        if value is not None:
            family.add_metric([], value)
        yield family


def distribution_version(distribution: str) -> str:
    """Return the installed version of ``distribution`` (``unknown`` when not installed).

    It reads the package metadata from disk: call it at import time, not on the event
    loop.
    """
    try:
        return version(distribution)
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def register_build_info(registry: CollectorRegistry, service: str, service_version: str) -> None:
    """Add ``pgcm_build_info{service, version}`` with value 1 to ``registry``.

    Args:
        registry: the daemon's registry.
        service: the daemon's distribution name (``pgcm-supervise``, ``pgcm-proxy``).
        service_version: its version (see :func:`distribution_version`).
    """
    from prometheus_client import Info  # noqa: PLC0415 - only when exported

    Info(
        BUILD_INFO.removesuffix("_info"),
        "The running pgcm daemon: its service and version (value 1).",
        registry=registry,
    ).info({"service": service, "version": service_version})


async def serve_metrics(
    registry: CollectorRegistry,
    address: str,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``registry``'s text exposition over HTTP on ``address`` until cancelled.

    Start it with ``await task_group.start(serve_metrics, registry, address)`` in the
    daemon's own task group, and only when ``metrics_address`` is set (the caller has
    imported prometheus_client by then; nothing here imports it earlier). Every ``GET``
    gets the exposition, whatever its path; other methods get 405.

    Why an anyio server rather than prometheus_client's ``start_http_server``: that one
    binds on the calling thread (blocking the event loop while it does) and answers from
    a daemon thread of its own that no task group owns, so nothing cancels it with the
    daemon, and a failure in it goes unnoticed. Here the listener is a task of the
    daemon: it stops, closing every connection, when the daemon's task group is
    cancelled at shutdown, and an unbindable address fails the start. The exposition of
    a daemon's few dozen series is rendered on the loop; it takes far less time than
    one request's network round trip.

    Args:
        registry: the daemon's private registry.
        address: ``host:port`` to listen on (see :class:`~pgcm_common.hostport.BindAddress`;
            ``:0`` picks a free port).
        task_status: receives the bound port.

    Raises:
        ConfigError: the address cannot be bound (key ``metrics_address``; exit 2).

    Cancellation:
        Closes the listener and every open connection.
    """
    parsed = parse_bind_address(address)
    try:
        listener = await anyio.create_tcp_listener(
            local_host=parsed.bind_host, local_port=parsed.port, reuse_port=False
        )
    except OSError as exc:
        raise ConfigError("metrics_address", f"cannot listen on {address!r}: {exc}") from exc
    async with listener:
        bound = int(listener.extra(SocketAttribute.local_port))  # noqa: S610 - anyio, not Django
        _log.info("metrics.listen", host=parsed.bind_host, port=bound)
        task_status.started(bound)

        async def handle(stream: SocketStream) -> None:
            async with stream:
                await _answer(stream, registry)

        await listener.serve(handle)


async def _answer(stream: SocketStream, registry: CollectorRegistry) -> None:
    request = b""
    with anyio.move_on_after(_REQUEST_TIMEOUT_S):
        try:
            while b"\r\n\r\n" not in request and len(request) < _MAX_REQUEST_BYTES:
                request += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return
    if not request.startswith(b"GET "):
        status, body, content_type = b"405 Method Not Allowed", b"", b"text/plain"
    else:
        from prometheus_client import (  # noqa: PLC0415 - only when serving
            CONTENT_TYPE_LATEST,
            generate_latest,
        )

        status, body = b"200 OK", generate_latest(registry)
        content_type = CONTENT_TYPE_LATEST.encode()
    head = (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
    )
    try:
        await stream.send(head + body)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        return
