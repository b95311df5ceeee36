"""The reconnecting clients' bookkeeping: errors, gaps, time to the first commit, losses."""

from __future__ import annotations

from pgcm_lab.clients import ClientsLog, Outcome, lost_commits, parse_line, worker_argv


def ok(client: int, n: int, started: float, ended: float) -> Outcome:
    return Outcome(client, n, started, ended)


def err(client: int, n: int, started: float, ended: float, cls: str = "ConnectionError") -> Outcome:
    return Outcome(client, n, started, ended, cls, "server closed the connection")


def crash_log() -> ClientsLog:
    """Two clients; the primary dies at 100.0; client 0's transaction in flight fails."""
    log = ClientsLog()
    for outcome in (
        ok(0, 1, 99.0, 99.1),
        ok(1, 1, 99.05, 99.2),
        ok(0, 2, 99.1, 99.9),
        err(0, 3, 99.9, 105.0),
        err(1, 2, 100.5, 100.6, "ClientCannotConnectError"),
        ok(1, 3, 100.7, 107.5),  # waited in PgBouncer, then committed on the new primary
        ok(0, 4, 105.1, 107.6),
        ok(0, 5, 107.6, 107.7),
    ):
        log.add(outcome)
    log.mark_fault("kill-node n1", at=100.0)
    return log


def test_a_line_round_trips_and_foreign_lines_are_ignored() -> None:
    failed = err(3, 7, 1.5, 2.25, "TimeoutError")
    assert parse_line(failed.as_line()) == failed
    assert parse_line(ok(1, 2, 3.0, 4.0).as_line()) == ok(1, 2, 3.0, 4.0)
    for junk in ("", "ready", "[1, 2]", '{"c": 1}', "Traceback (most recent call last):",
                 '{"c": "x", "n": 1, "s": 0, "e": 1}'):  # fmt: skip
        assert parse_line(junk) is None


def test_a_long_message_is_cut_in_the_line() -> None:
    line = Outcome(0, 1, 0.0, 1.0, "E", "x" * 5000).as_line()
    parsed = parse_line(line)
    assert parsed is not None
    assert len(parsed.message) == 200


def test_errors_keep_their_class_and_time_relative_to_the_fault() -> None:
    report = crash_log().report()
    assert report["errors"] == 2
    assert report["error_classes"] == {"ConnectionError": 1, "ClientCannotConnectError": 1}
    assert [(e["client"], e["at_s"], e["class"]) for e in report["error_list"]] == [  # type: ignore[attr-defined]
        (1, 0.6, "ClientCannotConnectError"),
        (0, 5.0, "ConnectionError"),
    ]


def test_first_success_counts_only_transactions_started_after_the_fault() -> None:
    log = crash_log()
    # 99.9 -> 105.0 failed; 100.7 -> 107.5 is the first commit begun after the crash.
    assert log.first_success_after(100.0) == 7.5
    assert log.successes_after(100.0) == 3
    assert log.first_success_after(200.0) is None
    assert crash_log().report()["faults"] == [
        {"fault": "kill-node n1", "at_s": 0.0, "first_success_s": 7.5}
    ]


def test_longest_gap_is_between_consecutive_commits_of_any_client() -> None:
    log = crash_log()
    assert log.longest_gap() == 7.6  # 99.9 -> 107.5
    assert log.longest_gap(since=107.0) == 0.1
    assert ClientsLog([ok(0, 1, 0.0, 1.0)]).longest_gap() is None


def test_acknowledged_commits_missing_on_the_primary_are_lost() -> None:
    log = crash_log()
    assert log.acked == {(0, 1), (1, 1), (0, 2), (1, 3), (0, 4), (0, 5)}
    stored = [(0, 1), (1, 1), (0, 2), (1, 3), (0, 4), (0, 5), (0, 3)]  # a failed one may land
    assert lost_commits(log.acked, stored) == []
    assert lost_commits(log.acked, stored[1:4]) == [(0, 1), (0, 4), (0, 5)]


def test_the_worker_command_line_names_host_clients_and_table() -> None:
    argv = worker_argv("/venv/bin/python", "10.250.0.100", clients=8, table="t")
    assert argv == ["/venv/bin/python", "-m", "pgcm_lab.clients", "--host", "10.250.0.100",
                    "--clients", "8", "--table", "t"]  # fmt: skip
