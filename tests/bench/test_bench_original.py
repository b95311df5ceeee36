"""bench_original's pure parts: the original's files, its paused time, the summary."""

from __future__ import annotations

import importlib.util
import json
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from pgcm_lab.topology import Topology

_BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load() -> ModuleType:
    # bench_original imports its sibling module ``original`` as the benchmark runner does.
    if str(_BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(_BENCHMARKS))
    spec = importlib.util.spec_from_file_location(
        "bench_original", _BENCHMARKS / "bench_original.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load()
_TOPOLOGY = Topology(agent="pgsql")


def _log(ts: str, **fields: object) -> str:
    return json.dumps({"ts": ts, **fields})


def test_postgres_node_config_binds_the_api_on_its_address_and_lists_every_node() -> None:
    config = tomllib.loads(bench.original_config(_TOPOLOGY, _TOPOLOGY.node("n2")))
    assert config["bind-address"] == "10.250.0.12:8080"
    assert config["etcd-endpoints"] == [
        "http://10.250.0.11:2379", "http://10.250.0.12:2379", "http://10.250.0.13:2379",
    ]  # fmt: skip
    assert config["failover-api-endpoints"] == [
        "10.250.0.11:8080", "10.250.0.12:8080", "10.250.0.13:8080",
    ]  # fmt: skip
    assert config["etcd-namespace"] == "/postgres"
    assert config["pgbouncer-socket-dir"] == "/run/pgbouncer"


def test_app_node_config_serves_no_api() -> None:
    config = tomllib.loads(bench.original_config(_TOPOLOGY, _TOPOLOGY.app))
    assert "bind-address" not in config


def test_template_keeps_the_go_placeholder_and_has_the_line_the_original_requires() -> None:
    text = bench.original_template(_TOPOLOGY.app)
    assert "host={{.Host}}" in text
    pgbouncer_section = text.split("[pgbouncer]", 1)[1]
    assert "\nignore_startup_parameters = extra_float_digits\n" in pgbouncer_section


def test_paused_time_runs_from_the_pause_request_to_the_last_resume_answer() -> None:
    lines = [
        _log("2026-12-07T10:00:00.000000000Z", event="clients.health_check"),
        _log(
            "2026-12-07T10:00:01.250000123Z",
            event="clients.pgbouncer.pause",
            msg="requesting all pgbouncers pause",
        ),
        _log(
            "2026-12-07T10:00:01.260000000Z",
            event="clients.pgbouncer.pause",
            endpoint="10.250.0.11:8080",
            elapsed=0.01,
        ),
        "not json",
        _log(
            "2026-12-07T10:00:08.000000000Z",
            event="clients.pgbouncer.resume",
            msg="requesting all pgbouncers resume",
        ),
        _log(
            "2026-12-07T10:00:08.010000000Z",
            event="clients.pgbouncer.resume",
            endpoint="10.250.0.11:8080",
            elapsed=0.01,
        ),
        _log(
            "2026-12-07T10:00:08.030000999Z",
            event="clients.pgbouncer.resume",
            endpoint="10.250.0.12:8080",
            elapsed=0.03,
        ),
    ]
    assert bench.original_paused_s(lines) == 6.78


def test_no_paused_time_without_a_resume() -> None:
    lines = [
        _log(
            "2026-12-07T10:00:01Z",
            event="clients.pgbouncer.pause",
            msg="requesting all pgbouncers pause",
        ),
    ]
    assert bench.original_paused_s(lines) is None


def test_summary_counts_failures_and_takes_medians_and_the_p99() -> None:
    runs = [
        {"returncode": 0, "failed_transactions": 0, "aborted_clients": 0,
         "max_latency_ms": 100.0, "paused_s": 6.0, "command_s": 7.0},
        {"returncode": 1, "failed_transactions": 3, "aborted_clients": 1,
         "max_latency_ms": 300.0, "paused_s": None, "command_s": 9.0},
        {"returncode": 0, "failed_transactions": 0, "aborted_clients": 0,
         "max_latency_ms": 200.0, "paused_s": 7.0, "command_s": 8.0},
    ]  # fmt: skip
    summary = bench.summarize(runs)
    assert summary["runs"] == 3
    assert summary["succeeded"] == 2
    assert summary["failed_transactions_total"] == 3
    assert summary["aborted_clients_total"] == 1
    assert summary["max_latency_median_ms"] == 200.0
    assert summary["max_latency_p99_ms"] == 300.0
    assert summary["paused_median_s"] == 6.5
    assert summary["paused_p99_s"] == 7.0


def test_run_skips_with_the_reason_when_no_checkout_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PGCM_BENCH_ORIGINAL_SRC", raising=False)
    result = bench.run()
    assert "PGCM_BENCH_ORIGINAL_SRC is not set" in str(result["skipped"])


def _attributes(*values: str) -> str:
    return "".join(
        f'<node name="n{i}"><attribute name="pgsql-data-status" value="{v}"/></node>'
        for i, v in enumerate(values, 1)
    )


def test_the_agent_has_settled_with_one_latest_and_one_sync_standby() -> None:
    assert bench.agent_settled(_attributes("LATEST", "STREAMING|SYNC", "STREAMING|ASYNC"))


@pytest.mark.parametrize(
    "values",
    [
        ("LATEST", "STREAMING|ASYNC", "STREAMING|ASYNC"),  # no sync named yet
        ("LATEST", "STREAMING|SYNC", "LATEST"),  # two claim the latest data
        ("LATEST", "DISCONNECT", "STREAMING|SYNC", "STREAMING|SYNC"),
    ],
)
def test_the_agent_has_not_settled_otherwise(values: tuple[str, ...]) -> None:
    assert not bench.agent_settled(_attributes(*values))
