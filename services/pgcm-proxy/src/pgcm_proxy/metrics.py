"""Prometheus metrics of pgcm-proxy, in a registry of their own (never the global one).

A private :class:`~prometheus_client.CollectorRegistry` keeps tests independent (each
builds its own ``ProxyMetrics``) and keeps library collectors we did not choose out of
the scrape. The HTTP endpoint is opt-in (``metrics_address``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import final

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["ProxyMetrics", "serve_metrics"]

log = structlog.get_logger("pgcm.proxy.metrics")

_APPLY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@final
class ProxyMetrics:
    """Every metric the proxy exports; ``registry`` is what the HTTP endpoint serves."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Create the metrics in ``registry`` (a fresh one by default)."""
        self.registry = registry if registry is not None else CollectorRegistry()
        self.primary = Gauge(
            "pgcm_proxy_primary_host_info",
            "The host PgBouncer routes to (value 1 on the current host's series).",
            ["host"],
            registry=self.registry,
        )
        self.applied_revision = Gauge(
            "pgcm_proxy_applied_revision",
            "etcd mod revision of the primary address last applied and acknowledged.",
            registry=self.registry,
        )
        self.reloads = Counter(
            "pgcm_proxy_reloads",
            "RELOAD commands sent to PgBouncer.",
            ["endpoint"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "pgcm_proxy_rejected_values",
            "etcd values refused before rendering (deleted key, hostile or malformed).",
            ["reason"],
            registry=self.registry,
        )
        self.last_success = Gauge(
            "pgcm_proxy_last_success_timestamp_seconds",
            "Unix time of the last apply confirmed by SHOW DATABASES and acknowledged.",
            registry=self.registry,
        )
        self.apply_errors = Counter(
            "pgcm_proxy_apply_errors",
            "Apply attempts that failed and will be retried.",
            ["error"],
            registry=self.registry,
        )
        self.apply_seconds = Histogram(
            "pgcm_proxy_apply_duration_seconds",
            "Duration of successful applies (render, write, RELOAD, confirm, ack).",
            buckets=_APPLY_BUCKETS,
            registry=self.registry,
        )
        self._host: str | None = None

    def routed_to(self, host: str, revision: int, at: float, duration_s: float) -> None:
        """Record a confirmed, acknowledged apply."""
        if self._host != host:
            if self._host is not None:
                self.primary.remove(self._host)
            self.primary.labels(host=host).set(1)
            self._host = host
        self.applied_revision.set(revision)
        self.last_success.set(at)
        self.apply_seconds.observe(duration_s)


@contextmanager
def serve_metrics(metrics: ProxyMetrics, host: str, port: int) -> Iterator[int]:
    """Serve ``metrics`` over HTTP on ``host:port`` until exit; yield the bound port.

    prometheus_client serves from its own daemon thread; leaving the block shuts the
    server down and joins that thread, so nothing outlives the service.

    Raises:
        OSError: the address cannot be bound.
    """
    server, thread = start_http_server(port, addr=host or "0.0.0.0", registry=metrics.registry)  # noqa: S104 - an empty host in metrics_address asks for every address
    bound = int(server.server_address[1])
    log.info("metrics.listen", address=f"{host}:{bound}")
    try:
        yield bound
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
