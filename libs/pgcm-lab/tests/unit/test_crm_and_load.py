from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pgcm_lab.crm import parse_crm_mon
from pgcm_lab.errors import LabError
from pgcm_lab.lab import postmaster_pids, status_role
from pgcm_lab.load import max_latency_ms, parse_pgbench

DATA = Path(__file__).parent / "data"


def test_healthy_view_has_one_primary_and_settled_scores() -> None:
    view = parse_crm_mon((DATA / "01-healthy-n1-primary.xml").read_text())
    assert view.primary == "n1"
    assert view.quorum
    assert view.online == {"n1", "n2", "n3"}
    assert view.unpromoted == ("n2", "n3")
    assert view.scores == {"n1": 1001, "n2": 1000, "n3": 990}
    assert view.settled_on("n1")
    assert not view.settled_on("n2")


def test_a_failed_promotion_is_not_a_primary() -> None:
    # PAF aborts a promotion (the op fails) when another standby has more WAL; crm_mon
    # then shows the instance "Promoted" with failed="true" until the other is promoted.
    healthy = (DATA / "01-healthy-n1-primary.xml").read_text()
    promoted = (
        'role="Promoted" active="true" orphaned="false" blocked="false" managed="true" '
        'failed="false"'
    )
    assert healthy.count(promoted) == 1
    failed = promoted.replace('failed="false"', 'failed="true"')
    view = parse_crm_mon(healthy.replace(promoted, failed))
    assert view.promoted == ()
    assert view.primary is None
    assert view.unpromoted == ("n2", "n3")
    assert view.failed == ("n1",)


def test_minority_side_of_a_partition_has_no_quorum() -> None:
    view = parse_crm_mon((DATA / "04-partitioned-n1-view-from-n1.xml").read_text())
    assert not view.quorum


def test_garbage_is_a_lab_error() -> None:
    with pytest.raises(LabError, match="no XML"):
        parse_crm_mon("crm_mon: Error: cluster is not available on this node")


PGBENCH_OUT = """\
transaction type: <builtin: TPC-B (sort of)>
number of clients: 4
duration: 10 s
number of transactions actually processed: 1234
number of failed transactions: 0 (0.000%)
latency average = 32.410 ms
initial connection time = 12.000 ms
tps = 123.400000 (without initial connection time)
"""
PGBENCH_ERR = """\
pgbench: error: client 2 script 0 aborted in command 5 query 0: FATAL:  terminating connection
pgbench: error: client 3 script 0 aborted in command 5 query 0: FATAL:  terminating connection
pgbench: error: Run was aborted; the above results are incomplete.
"""


def test_pgbench_report_counts_aborted_clients_and_keeps_latencies() -> None:
    report = parse_pgbench(PGBENCH_OUT, PGBENCH_ERR, clients=4, seconds=10, latency_max_ms=812.5)
    assert report.transactions == 1234
    assert report.failed_transactions == 0
    assert report.aborted_clients == 2
    assert report.latency_avg_ms == pytest.approx(32.41)
    assert report.tps == pytest.approx(123.4)
    assert not report.clean
    assert report.as_dict()["latency_max_ms"] == 812.5


def test_clean_run_reports_no_errors() -> None:
    report = parse_pgbench(PGBENCH_OUT, "", clients=4, seconds=10, latency_max_ms=None)
    assert report.clean
    assert report.errors == ()


def test_max_latency_comes_from_the_per_transaction_log_in_microseconds() -> None:
    lines = ["0 1 2500 0 1700000000 1", "1 7 125000 0 1700000001 2", "2 3 failed 0 1 2"]
    assert max_latency_ms(lines) == 125.0
    assert max_latency_ms([]) is None


def test_status_shows_a_failed_instance_as_failed() -> None:
    healthy = parse_crm_mon((DATA / "01-healthy-n1-primary.xml").read_text())
    failed_primary = replace(healthy, promoted=(), failed=("n1",))
    streaming = {"n2": ("streaming", "sync"), "n3": ("streaming", "potential")}
    assert status_role("n1", healthy, streaming, up=True) == "primary"
    assert status_role("n1", failed_primary, {}, up=True) == "failed"
    assert status_role("n2", healthy, streaming, up=True) == "sync"
    assert status_role("n3", healthy, {}, up=True) == "standby"
    assert status_role("n3", healthy, {}, up=False) == "down"
    assert status_role("n3", None, {}, up=True) == "unknown"


def test_postmaster_pids_are_postgres_processes_without_a_postgres_parent() -> None:
    ps = (
        "    1     0 init\n"
        "   40     1 pacemakerd\n"
        "  983     1 postgres\n"
        "  985   983 postgres\n"
        "  987   983 postgres\n"
        " 1200  1100 postgres\n"  # a second postmaster (parent: runuser, not postgres)
        " 1201  1200 postgres\n"
        " 1300   983 psql\n"
    )
    assert postmaster_pids(ps) == [983, 1200]


def test_postmaster_pids_of_a_node_without_postgres_is_empty() -> None:
    assert postmaster_pids("    1     0 init\n   12     1 corosync\n\n") == []
