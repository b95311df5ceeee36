"""Reading the local PostgreSQL's facts from text rows, and the probe's error paths."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from pgcm_common.postgres import (
    PostgresProtocolError,
    PostgresQueryError,
    SimpleQueryResult,
)
from pgcm_supervise.status import _read_status as read_status

Answer = SimpleQueryResult | PostgresQueryError


class FakeConnection:
    """Answers each statement by a keyword it contains; records what was asked."""

    def __init__(self, answers: Mapping[str, Answer]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def query(self, sql: str) -> SimpleQueryResult:
        self.asked.append(sql)
        for keyword, answer in self.answers.items():
            if keyword in sql:
                if isinstance(answer, PostgresQueryError):
                    raise answer
                return answer
        raise AssertionError(f"unexpected statement {sql!r}")


def _one(value: str | None) -> SimpleQueryResult:
    return SimpleQueryResult("SELECT 1", ("v",), ((value,),))


REPLICATION = SimpleQueryResult(
    "SELECT 1",
    ("application_name", "state", "sync_state", "lag_bytes", "lag_s"),
    (("standby", "streaming", "async", "128", "0.25"), (None, "startup", None, None, None)),
)


def _primary(timeline: Answer, oldest: str | None = "1.5") -> FakeConnection:
    return FakeConnection(
        {
            "pg_is_in_recovery": _one("f"),
            "pg_stat_replication": REPLICATION,
            "pg_walfile_name": timeline,
            "pg_stat_activity": _one(oldest),
        }
    )


async def test_a_primary_is_read_from_text_rows() -> None:
    status = await read_status(_primary(_one("3")))  # type: ignore[arg-type]
    assert not status.in_recovery
    assert status.timeline == 3
    assert status.oldest_transaction_age_s == 1.5
    first, second = status.replication
    assert (first.application_name, first.lag_bytes, first.lag_s) == ("standby", 128, 0.25)
    assert (second.application_name, second.sync_state, second.lag_bytes) == ("", "", None)


async def test_no_open_transaction_and_nan_are_no_age() -> None:
    assert (await read_status(_primary(_one("1"), None))).oldest_transaction_age_s is None  # type: ignore[arg-type]
    assert (await read_status(_primary(_one("1"), "NaN"))).oldest_transaction_age_s is None  # type: ignore[arg-type]


async def test_a_standby_asks_its_walreceiver_and_no_replication_rows() -> None:
    connection = FakeConnection(
        {
            "pg_is_in_recovery": _one("t"),
            "pg_stat_wal_receiver": _one(None),
            "pg_stat_activity": _one(None),
        }
    )
    status = await read_status(connection)  # type: ignore[arg-type]
    assert status.in_recovery
    assert status.replication == ()
    assert status.timeline is None
    assert not any("pg_stat_replication" in sql for sql in connection.asked)


async def test_insufficient_privilege_for_the_timeline_keeps_the_other_facts() -> None:
    refused = PostgresQueryError("SELECT", "42501", "permission denied for function")
    status = await read_status(_primary(refused))  # type: ignore[arg-type]
    assert status.timeline is None
    assert status.oldest_transaction_age_s == 1.5
    assert len(status.replication) == 2


async def test_another_error_of_the_timeline_query_fails_the_probe() -> None:
    refused = PostgresQueryError("SELECT", "57014", "canceling statement due to statement timeout")
    with pytest.raises(PostgresQueryError, match="57014"):
        await read_status(_primary(refused))  # type: ignore[arg-type]


async def test_a_value_that_is_no_number_is_a_protocol_error() -> None:
    with pytest.raises(PostgresProtocolError, match="expected a number"):
        await read_status(_primary(_one("three")))  # type: ignore[arg-type]
