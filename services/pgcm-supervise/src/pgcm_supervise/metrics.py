"""Prometheus metrics of pgcm-supervise, in a registry of its own.

The registry is private (not prometheus_client's global one) so tests and several
servers in one process never share counters; :func:`pgcm_common.metrics.serve_metrics`
serves it on ``metrics_address``. Without
``metrics_address`` nothing is exported: every metric is discarded and prometheus_client
is never imported (about 1.6 MB of RSS, measured after supervise's other imports).
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

    from pgcm_common.pacemaker import ClusterState

__all__ = ["Discarded", "SuperviseMetrics"]

# Read here, at import, because it reads package metadata from disk (never on the loop).
_VERSION = distribution_version("pgcm-supervise")


@final
class SuperviseMetrics:
    """Every metric supervise exports; one instance per process (or per test)."""

    crm_mon_reads: Counter | Discarded
    crm_mon_duration: Histogram | Discarded
    publications: Counter | Discarded
    refusals: Counter | Discarded
    conflicts: Counter | Discarded
    etcd_errors: Counter | Discarded
    published_primary: Gauge | Discarded
    last_publication: OptionalGauge | Discarded
    nudges: Counter | Discarded
    pgbouncer_paused: OptionalGauge | Discarded
    failed_instances: OptionalGauge | Discarded
    blocked_instances: OptionalGauge | Discarded
    fencing_pending: OptionalGauge | Discarded
    fencing_failed: OptionalGauge | Discarded

    def __init__(self, registry: CollectorRegistry | None = None, *, export: bool = True) -> None:
        """Create the metrics in ``registry`` (a fresh one by default).

        With ``export=False`` every metric is discarded and :attr:`registry` is None.
        """
        self._primary_labels: tuple[str, str] | None = None
        self.registry: CollectorRegistry | None = None
        if not export:
            discarded = Discarded()
            self.crm_mon_reads = self.publications = self.refusals = discarded
            self.conflicts = self.etcd_errors = self.nudges = discarded
            self.crm_mon_duration = discarded
            self.published_primary = self.last_publication = self.pgbouncer_paused = discarded
            self.failed_instances = self.blocked_instances = discarded
            self.fencing_pending = self.fencing_failed = discarded
            return
        # Imported here so a supervise without metrics_address never loads it.
        from prometheus_client import (  # noqa: PLC0415
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
        )

        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.crm_mon_reads = Counter(
            "pgcm_supervise_crm_mon_reads",
            "crm_mon reads by outcome (ok, failed, unparseable, timeout).",
            ["outcome"],
            registry=r,
        )
        register_build_info(r, "pgcm-supervise", _VERSION)
        self.crm_mon_duration = Histogram(
            "pgcm_supervise_crm_mon_duration_seconds",
            "Duration of one crm_mon read.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=r,
        )
        self.publications = Counter(
            "pgcm_supervise_publications",
            "Writes to etcd by key (master, record, status).",
            ["key"],
            registry=r,
        )
        self.refusals = Counter(
            "pgcm_supervise_refusals",
            "Publication attempts that wrote nothing, by reason.",
            ["reason"],
            registry=r,
        )
        self.conflicts = Counter(
            "pgcm_supervise_publish_conflicts",
            "Compare-and-put writes that lost to a concurrent writer.",
            registry=r,
        )
        self.etcd_errors = Counter(
            "pgcm_supervise_etcd_errors", "etcd requests that failed.", registry=r
        )
        self.published_primary = Gauge(
            "pgcm_supervise_published_primary_info",
            "The primary (node, address) this process last saw in etcd as its own view "
            "(value 1); absent before the first publication.",
            ["node", "address"],
            registry=r,
        )
        self.last_publication = OptionalGauge(
            "pgcm_supervise_last_publication_timestamp_seconds",
            "Unix time of the last cycle that found etcd holding this node's view; "
            "absent before the first.",
            registry=r,
        )
        self.nudges = Counter(
            "pgcm_supervise_nudges", "Datagrams received from the alert agent.", registry=r
        )
        self.holds = Counter(
            "pgcm_supervise_holds",
            "Holds this process started: the published primary was lost (<ns>/hold).",
            registry=r,
        )
        self.pgbouncer_paused = OptionalGauge(
            "pgcm_supervise_pgbouncer_paused",
            "1 when the local PgBouncer is paused, 0 when not; absent while unknown "
            "(before the first node status).",
            registry=r,
        )
        # Absent until the first successful crm_mon read; a failed read keeps the last
        # values, so an alert does not resolve because crm_mon stopped answering.
        self.failed_instances = OptionalGauge(
            "pgcm_supervise_pacemaker_failed_instances",
            "Instances of the promotable resource crm_mon marks failed (last successful read).",
            registry=r,
        )
        self.blocked_instances = OptionalGauge(
            "pgcm_supervise_pacemaker_blocked_instances",
            "Instances of the promotable resource crm_mon marks blocked: Pacemaker will not "
            "recover or move them until a human acts (last successful read).",
            registry=r,
        )
        self.fencing_pending = OptionalGauge(
            "pgcm_supervise_pacemaker_fencing_pending",
            "Fencing actions under way, from crm_mon's fencing history (last successful read).",
            registry=r,
        )
        self.fencing_failed = OptionalGauge(
            "pgcm_supervise_pacemaker_fencing_failed",
            "Failed fencing actions not followed by a successful fencing of the same node "
            "(last successful read).",
            registry=r,
        )

    def observe_pacemaker(self, state: ClusterState) -> None:
        """Set the instance and fencing gauges from one successful crm_mon read."""
        instances = state.instances
        self.failed_instances.set(sum(1 for i in instances if i.failed))
        self.blocked_instances.set(sum(1 for i in instances if i.blocked))
        self.fencing_pending.set(len(state.pending_fencing))
        self.fencing_failed.set(len(state.failed_fencing))

    def set_published_primary(self, node: str, address: str) -> None:
        """Make ``(node, address)`` the only labelled series of the primary gauge."""
        labels = (node, address)
        if self._primary_labels == labels:
            return
        if self._primary_labels is not None:
            self.published_primary.remove(*self._primary_labels)
        self.published_primary.labels(*labels).set(1)
        self._primary_labels = labels

    def exposition(self) -> bytes:
        """Return the text exposition of every metric (empty when not exported)."""
        if self.registry is None:
            return b""
        from prometheus_client import generate_latest  # noqa: PLC0415 - see __init__

        return generate_latest(self.registry)
