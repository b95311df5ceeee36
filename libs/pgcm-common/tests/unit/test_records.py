from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgcm_common.records import (
    KeyLayout,
    NodeRole,
    NodeStatus,
    PostgresStatus,
    PrimaryRecord,
    ProxyAck,
    RecordError,
)

SEEN = datetime(2026, 11, 25, 18, 0, tzinfo=UTC)


def test_key_layout_matches_the_original_and_the_documented_records() -> None:
    keys = KeyLayout("/postgres/", "/master")
    assert keys.master == b"/postgres/master"
    assert keys.master_record == b"/postgres/master.json"
    assert keys.proxy_ack("app1") == b"/postgres/proxies/app1"
    assert keys.node_status("n2") == b"/postgres/supervise/n2"
    assert keys.lock == b"/postgres/lock"


def test_the_default_layout_is_the_original_one() -> None:
    assert KeyLayout().master == b"/master"


@pytest.mark.parametrize("name", ["", "a/b", "..", ".", "x\ny"])
def test_names_that_would_escape_their_prefix_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="segment"):
        KeyLayout().proxy_ack(name)


def test_records_round_trip() -> None:
    status = NodeStatus(
        node="n1",
        address="10.250.0.11",
        observed_at=SEEN,
        with_quorum=True,
        dc="n2",
        primary="n1",
        nodes=(NodeRole(name="n1", online=True, role="Promoted", promotion_score=1001),),
    )
    assert NodeStatus.from_json(b"k", status.to_json()) == status
    ack = ProxyAck(proxy_id="app1", host="10.250.0.12", revision=7, applied_at=SEEN)
    assert ProxyAck.from_json("k", ack.to_json()) == ack


def test_unknown_fields_from_a_newer_writer_are_ignored() -> None:
    raw = (
        b'{"node":"n1","address":"10.0.0.1","with_quorum":true,"dc":"n1","writer":"n1",'
        b'"observed_at":"2026-11-25T18:00:00Z","added_later":1}'
    )
    assert PrimaryRecord.from_json(b"/master.json", raw).node == "n1"


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b"", "<value>"),
        (b"not json", "<value>"),
        (
            b'{"proxy_id":"a","host":"h","revision":"x","applied_at":"2026-11-25T18:00:00Z"}',
            "revision",
        ),
        (b'{"proxy_id":"a","host":"h","applied_at":"2026-11-25T18:00:00Z"}', "revision"),
        (b"[]", "<value>"),
    ],
)
def test_malformed_records_raise_a_record_error_naming_the_field(raw: bytes, where: str) -> None:
    with pytest.raises(RecordError) as caught:
        ProxyAck.from_json(b"/proxies/a", raw)
    assert caught.value.key == "/proxies/a"
    assert caught.value.problem.startswith(where)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_as_another_error(raw: bytes) -> None:
    try:
        ProxyAck.from_json(b"k", raw)
    except RecordError:
        return


def test_postgres_status_timeline_and_lag_seconds_are_optional_and_round_trip() -> None:
    # A writer from before these fields: parsed, the new fields None.
    old = b'{"in_recovery": false, "replication": [{"application_name": "n2", "state": "streaming", "sync_state": "async", "lag_bytes": 5}]}'  # noqa: E501 - one record
    parsed = PostgresStatus.from_json("k", old)
    assert parsed.timeline is None
    assert parsed.replication[0].lag_s is None
    new = parsed.model_copy(
        update={
            "timeline": 4,
            "replication": (parsed.replication[0].model_copy(update={"lag_s": 0.25}),),
        }
    )
    again = PostgresStatus.from_json("k", new.to_json())
    assert (again.timeline, again.replication[0].lag_s) == (4, 0.25)
