from __future__ import annotations

import subprocess
import sys

from pgcm_supervise.metrics import SuperviseMetrics


def test_unexported_metrics_accept_every_update_and_expose_nothing() -> None:
    metrics = SuperviseMetrics(export=False)
    metrics.crm_mon_reads.labels("ok").inc()
    metrics.crm_mon_seconds.observe(0.01)
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
