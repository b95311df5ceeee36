from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgcm_common.records import (
    FencingRecord,
    InstanceTrouble,
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


_OLD_NODE_STATUS = (
    b'{"node":"n1","address":"10.0.0.11","observed_at":"2026-12-07T04:40:00Z",'
    b'"with_quorum":true,"dc":"n2","primary":"n1"}'
)


def test_a_node_status_without_fencing_fields_reads_as_no_trouble() -> None:
    status = NodeStatus.from_json("k", _OLD_NODE_STATUS)
    assert (status.troubled_instances, status.fencing, status.fencing_unknown) == ((), (), None)
    assert status.pending_fencing == ()


def test_troubled_instances_and_fencing_round_trip_and_describe_themselves() -> None:
    trouble = InstanceTrouble(
        resource="pgsqld", node="n1", role="Promoted", failed=True, blocked=True, managed=False
    )
    pending = FencingRecord(target="n1", action="off", state="pending", origin="n2")
    done = FencingRecord(
        target="n3",
        action="reboot",
        state="success",
        origin="n2",
        delegate="n1",
        completed="2026-12-07 04:40:12 +00:00",
    )
    status = NodeStatus.from_json("k", _OLD_NODE_STATUS).model_copy(
        update={"troubled_instances": (trouble,), "fencing": (pending, done)}
    )
    again = NodeStatus.from_json("k", status.to_json())
    assert again == status
    assert again.pending_fencing == (pending,)
    assert trouble.describe() == "pgsqld (Promoted) on n1: failed, blocked, unmanaged"
    assert pending.describe() == "off of n1 pending; requested by n2"
    assert done.describe() == (
        "reboot of n3 success at 2026-12-07 04:40:12 +00:00; requested by n2, run by n1"
    )


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        (b',"fencing":[{"target":"n1","action":"off","state":"pending"}]', "fencing.0.origin"),
        (b',"fencing":"n1"', "fencing"),
        (b',"troubled_instances":[{"resource":"pgsqld","node":"n1"}]', "troubled_instances.0"),
    ],
)
def test_malformed_fencing_or_trouble_is_a_record_error(extra: bytes, where: str) -> None:
    raw = _OLD_NODE_STATUS[:-1] + extra + b"}"
    with pytest.raises(RecordError, match=where):
        NodeStatus.from_json("k", raw)
