"""Prometheus metrics of pgcm-proxy, in a registry of their own (never the global one).

A private :class:`~prometheus_client.CollectorRegistry` keeps tests independent (each
builds its own ``ProxyMetrics``) and keeps library collectors we did not choose out of
the scrape. The HTTP endpoint (:func:`pgcm_common.metrics.serve_metrics`) is opt-in
(``metrics_address``); without it the metrics
are discarded and prometheus_client is never imported (about 1.6 MB of the proxy's RSS,
measured after the proxy's other imports).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

from pgcm_common.metrics import (
    Discarded,
    OptionalGauge,
    distribution_version,
    register_build_info,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ProxyMetrics"]

# Read here, at import, because it reads package metadata from disk (never on the loop).
_VERSION = distribution_version("pgcm-proxy")

_APPLY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@final
class ProxyMetrics:
    """Every metric the proxy exports; ``registry`` is what the HTTP endpoint serves."""

    primary: Gauge | Discarded
    target_revision: OptionalGauge | Discarded
    applied_revision: OptionalGauge | Discarded
    reloads: Counter | Discarded
    rejected: Counter | Discarded
    last_success: OptionalGauge | Discarded
    apply_errors: Counter | Discarded
    apply_seconds: Histogram | Discarded
    holding: OptionalGauge | Discarded
    holds: Counter | Discarded

    def __init__(self, registry: CollectorRegistry | None = None, *, export: bool = True) -> None:
        """Create the metrics in ``registry`` (a fresh one by default).

        With ``export=False`` every metric is discarded and ``registry`` is unavailable.
        """
        self._host: str | None = None
        self._registry: CollectorRegistry | None = None
        if not export:
            discarded = Discarded()
            self.primary = self.applied_revision = self.last_success = discarded
            self.target_revision = discarded
            self.reloads = self.rejected = self.apply_errors = discarded
            self.apply_seconds = self.holding = self.holds = discarded
            return
        # Imported here so a proxy without metrics_address never loads it.
        from prometheus_client import (  # noqa: PLC0415
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
        )

        self._registry = registry = registry if registry is not None else CollectorRegistry()
        register_build_info(registry, "pgcm-proxy", _VERSION)
        self.primary = Gauge(
            "pgcm_proxy_primary_host_info",
            "The host PgBouncer routes to (value 1 on the current host's series).",
            ["host"],
            registry=registry,
        )
        self.target_revision = OptionalGauge(
            "pgcm_proxy_target_revision",
            "etcd mod revision of the newest valid primary address read from etcd; "
            "absent before the first.",
            registry=registry,
        )
        self.applied_revision = OptionalGauge(
            "pgcm_proxy_applied_revision",
            "etcd mod revision of the primary address last applied and acknowledged; "
            "absent before the first.",
            registry=registry,
        )
        self.reloads = Counter(
            "pgcm_proxy_reloads",
            "RELOAD commands sent to PgBouncer.",
            ["endpoint"],
            registry=registry,
        )
        self.rejected = Counter(
            "pgcm_proxy_rejected_values",
            "etcd values refused before rendering (deleted key, hostile or malformed).",
            ["reason"],
            registry=registry,
        )
        self.last_success = OptionalGauge(
            "pgcm_proxy_last_success_timestamp_seconds",
            "Unix time of the last apply confirmed by SHOW DATABASES and acknowledged; "
            "absent before the first.",
            registry=registry,
        )
        self.apply_errors = Counter(
            "pgcm_proxy_apply_errors",
            "Apply attempts that failed and will be retried.",
            ["error"],
            registry=registry,
        )
        self.apply_seconds = Histogram(
            "pgcm_proxy_apply_duration_seconds",
            "Duration of successful applies (render, write, RELOAD, confirm, ack).",
            buckets=_APPLY_BUCKETS,
            registry=registry,
        )
        self.holding = OptionalGauge(
            "pgcm_proxy_holding",
            "1 while this proxy holds new transactions (its PgBouncers paused because the "
            "primary they route to is lost), else 0; absent before the first hold.",
            registry=registry,
        )
        self.holds = Counter(
            "pgcm_proxy_holds",
            "Holds this proxy ended, by how: applied (a new primary), released (the hold "
            "record went), expired (its deadline or hold_limit passed).",
            ["outcome"],
            registry=registry,
        )

    @property
    def registry(self) -> CollectorRegistry:
        """Return the registry the metrics live in.

        Raises:
            RuntimeError: the metrics were created with ``export=False``.
        """
        if self._registry is None:
            raise RuntimeError("metrics were created with export=False")
        return self._registry

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
