from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

from pgcm_supervise.metrics import SuperviseMetrics


def test_unexported_metrics_accept_every_update_and_expose_nothing() -> None:
    metrics = SuperviseMetrics(export=False)
    metrics.crm_mon_reads.labels("ok").inc()
    metrics.crm_mon_duration.observe(0.01)
    metrics.refusals.labels("no_quorum").inc()
    metrics.set_published_primary("n1", "10.0.0.11")
    metrics.set_published_primary("n2", "10.0.0.12")
    metrics.pgbouncer_paused.set(1)
    assert metrics.registry is None
    assert metrics.exposition() == b""


def test_a_supervise_without_metrics_address_never_imports_prometheus_client() -> None:
    # prometheus_client costs RSS (the daemon's memory budget); only metrics_address may load it.
    code = (
        "import sys; import pgcm_supervise.cli, pgcm_supervise.app;"
        " from pgcm_supervise.metrics import SuperviseMetrics;"
        " from pgcm_supervise.grpc_serve import RpcMetrics;"
        " SuperviseMetrics(export=False); RpcMetrics(None);"
        " print('prometheus_client' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


def test_exported_metrics_name_the_build_and_expose_no_unknown_values() -> None:
    metrics = SuperviseMetrics()
    assert metrics.registry is not None
    sample = metrics.registry.get_sample_value
    build = sample(
        "pgcm_build_info", {"service": "pgcm-supervise", "version": version("pgcm-supervise")}
    )
    assert build == 1
    # Unknown or never happened: no series at all (a rule cannot mistake -1 or 0 for data).
    assert sample("pgcm_supervise_pgbouncer_paused") is None
    assert sample("pgcm_supervise_last_publication_timestamp_seconds") is None
    assert b"pgcm_supervise_pgbouncer_paused -1" not in metrics.exposition()
    metrics.pgbouncer_paused.set(1)
    metrics.last_publication.set(1_700_000_000)
    assert sample("pgcm_supervise_pgbouncer_paused") == 1
    assert sample("pgcm_supervise_last_publication_timestamp_seconds") == 1_700_000_000
    metrics.pgbouncer_paused.clear()
    assert sample("pgcm_supervise_pgbouncer_paused") is None


def test_crm_mon_durations_are_a_seconds_histogram() -> None:
    metrics = SuperviseMetrics()
    metrics.crm_mon_duration.observe(0.03)
    assert metrics.registry is not None
    sample = metrics.registry.get_sample_value
    assert sample("pgcm_supervise_crm_mon_duration_seconds_count") == 1
    assert sample("pgcm_supervise_crm_mon_duration_seconds_bucket", {"le": "0.05"}) == 1
    assert sample("pgcm_supervise_crm_mon_duration_seconds_bucket", {"le": "0.025"}) == 0
