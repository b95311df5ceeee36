from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgcm_common._pgwire.wire import SimpleQueryResult, parse_data_row, parse_row_description
from pgcm_common.pgbouncer import (
    DatabaseRow,
    PgBouncerProtocolError,
    PgBouncerState,
    PgBouncerVersion,
    PoolRow,
)

# Verbatim SHOW DATABASES row from PgBouncer 1.18.0 (Debian 12).
DATABASE_1_18 = {
    "name": "app",
    "host": "127.0.0.1",
    "port": "54329",
    "database": "postgres",
    "force_user": None,
    "pool_size": "20",
    "min_pool_size": "0",
    "reserve_pool": "0",
    "pool_mode": None,
    "max_connections": "0",
    "current_connections": "0",
    "paused": "0",
    "disabled": "1",
}


def test_database_row_parses_pgbouncer_1_18_output() -> None:
    row = DatabaseRow.from_record(DATABASE_1_18)
    assert (row.name, row.host, row.port, row.database) == ("app", "127.0.0.1", 54329, "postgres")
    assert row.force_user is None
    assert row.pool_size == 20
    assert row.disabled
    assert not row.paused


def test_database_row_ignores_columns_of_newer_versions() -> None:
    row = DatabaseRow.from_record({**DATABASE_1_18, "server_lifetime": "3600", "paused": "1"})
    assert row.paused


def test_database_row_without_port_is_a_protocol_error() -> None:
    record = {key: value for key, value in DATABASE_1_18.items() if key != "port"}
    with pytest.raises(PgBouncerProtocolError, match="port"):
        DatabaseRow.from_record(record)


def test_database_row_with_non_numeric_port_is_a_protocol_error() -> None:
    with pytest.raises(PgBouncerProtocolError, match="integer"):
        DatabaseRow.from_record({**DATABASE_1_18, "port": "x"})


def test_pool_row_combines_maxwait_seconds_and_microseconds() -> None:
    row = PoolRow.from_record(
        {
            "database": "app",
            "user": "postgres",
            "cl_waiting": "3",
            "maxwait": "2",
            "maxwait_us": "5",
        }
    )
    assert row.cl_waiting == 3
    assert row.maxwait_us == 2_000_005


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PgBouncer 1.18.0", (1, 18, 0)),
        ("pgbouncer 1.21", (1, 21, 0)),
        ("PgBouncer 1.7.2 x", (1, 7, 2)),
    ],
)
def test_version_parses(text: str, expected: tuple[int, int, int]) -> None:
    version = PgBouncerVersion.parse(text)
    assert (version.major, version.minor, version.patch) == expected


def test_version_without_pgbouncer_is_a_protocol_error() -> None:
    with pytest.raises(PgBouncerProtocolError):
        PgBouncerVersion.parse("PostgreSQL 15")


@settings(max_examples=30)
@given(st.text())
def test_version_parse_never_crashes(text: str) -> None:
    try:
        version = PgBouncerVersion.parse(text)
    except PgBouncerProtocolError:
        return  # A clear error is the other allowed outcome: never another exception.
    assert "pgbouncer" in text.lower()
    assert version.major >= 0


def test_state_without_show_state_leaves_global_pause_unknown() -> None:
    rows = (DatabaseRow.from_record({**DATABASE_1_18, "paused": "1", "disabled": "0"}),)
    state = PgBouncerState.from_show(None, rows)
    assert state.paused is None
    assert state.suspended is None
    assert state.paused_databases == {"app"}
    assert state.disabled_databases == frozenset()


def test_state_reads_show_state_key_value_rows() -> None:
    records = (
        {"key": "active", "value": "no"},
        {"key": "paused", "value": "yes"},
        {"key": "suspended", "value": "no"},
    )
    state = PgBouncerState.from_show(records, ())
    assert state.paused is True
    assert state.suspended is False


def _row_description(names: list[str]) -> bytes:
    body = len(names).to_bytes(2, "big")
    for name in names:
        body += name.encode() + b"\0" + bytes(18)
    return body


def _data_row(values: list[str | None]) -> bytes:
    body = len(values).to_bytes(2, "big")
    for value in values:
        if value is None:
            body += (-1).to_bytes(4, "big", signed=True)
        else:
            body += len(value.encode()).to_bytes(4, "big") + value.encode()
    return body


@settings(max_examples=30)
@given(
    st.lists(
        st.text(
            alphabet=st.characters(exclude_characters="\0", exclude_categories=["Cs"]),
            min_size=1,
        ),
        max_size=8,
    ),
    st.data(),
)
def test_wire_rows_round_trip(names: list[str], data: st.DataObject) -> None:
    values = data.draw(
        st.lists(
            st.none() | st.text(st.characters(exclude_categories=["Cs"])),
            min_size=len(names),
            max_size=len(names),
        )
    )
    assert parse_row_description(_row_description(names)) == tuple(names)
    assert parse_data_row(_data_row(values)) == tuple(values)


def test_query_result_records_map_columns_to_values() -> None:
    result = SimpleQueryResult("SHOW", ("a", "b"), (("1", None),))
    assert result.records() == ({"a": "1", "b": None},)
