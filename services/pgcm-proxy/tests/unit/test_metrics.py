from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest

from pgcm_proxy.metrics import ProxyMetrics


def test_unexported_metrics_accept_every_update_and_have_no_registry() -> None:
    metrics = ProxyMetrics(export=False)
    metrics.rejected.labels(reason="deleted").inc()
    metrics.reloads.labels(endpoint="127.0.0.1:6432").inc()
    metrics.apply_errors.labels(error="RoutingNotConfirmed").inc()
    metrics.routed_to("10.0.0.1", 7, 1.0, 0.002)
    metrics.routed_to("10.0.0.2", 8, 2.0, 0.003)
    with pytest.raises(RuntimeError, match="export=False"):
        _ = metrics.registry


def test_exported_metrics_record_the_current_host_only() -> None:
    metrics = ProxyMetrics()
    metrics.routed_to("10.0.0.1", 7, 1.0, 0.002)
    metrics.routed_to("10.0.0.2", 8, 2.0, 0.003)
    sample = metrics.registry.get_sample_value
    assert sample("pgcm_proxy_primary_host_info", {"host": "10.0.0.2"}) == 1
    assert sample("pgcm_proxy_primary_host_info", {"host": "10.0.0.1"}) is None
    assert sample("pgcm_proxy_applied_revision") == 8


def test_a_proxy_without_metrics_address_never_imports_prometheus_client() -> None:
    # prometheus_client costs RSS (the proxy's memory budget); only metrics_address may load it.
    code = (
        "import sys; import pgcm_proxy.cli, pgcm_proxy.app;"
        " from pgcm_proxy.metrics import ProxyMetrics; ProxyMetrics(export=False);"
        " print('prometheus_client' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


def test_exported_metrics_name_the_build_and_expose_no_value_before_the_first_apply() -> None:
    metrics = ProxyMetrics()
    sample = metrics.registry.get_sample_value
    labels = {"service": "pgcm-proxy", "version": version("pgcm-proxy")}
    assert sample("pgcm_build_info", labels) == 1
    for name in (
        "pgcm_proxy_target_revision",
        "pgcm_proxy_applied_revision",
        "pgcm_proxy_last_success_timestamp_seconds",
    ):
        assert sample(name) is None, name
    metrics.target_revision.set(9)
    metrics.routed_to("10.0.0.1", 7, 1.0, 0.002)
    assert sample("pgcm_proxy_target_revision") == 9
    assert sample("pgcm_proxy_applied_revision") == 7
    assert sample("pgcm_proxy_last_success_timestamp_seconds") == 1.0
