"""The JSON gateway's encoding: what etcd sends is read, anything else is refused."""

from __future__ import annotations

import pytest

from pgcm_common._etcd.codec import (
    b64,
    compare,
    decode_body,
    header_revision,
    integer,
    key_value,
    prefix_range_end,
    unb64,
)
from pgcm_common._etcd.failures import GatewayError, Status, TransportError, retryable
from pgcm_common.etcd import Absent, KeyValue, ModRevisionIs, ValueIs


def test_a_key_value_as_etcd_sends_it_with_defaults_left_out() -> None:
    # etcd leaves out an empty value and a zero lease; int64 come as strings.
    message = {"key": b64(b"/k"), "create_revision": "2", "mod_revision": "3", "version": "2"}
    assert key_value(message) == KeyValue(b"/k", b"", 2, 3, 2, 0)


@pytest.mark.parametrize(
    "message",
    [
        {"key": "not base64!"},
        {"key": 5},
        {"key": b64(b"k"), "mod_revision": "3x"},
        {"key": b64(b"k"), "mod_revision": True},
        {"key": b64(b"k"), "lease": [1]},
    ],
    ids=["bad-base64", "key-not-text", "revision-not-a-number", "revision-bool", "lease-list"],
)
def test_a_malformed_key_value_is_a_transport_error(message: dict[str, object]) -> None:
    with pytest.raises(TransportError):
        key_value(message)


@pytest.mark.parametrize("body", [b"", b"[1]", b"\xff\xfe", b"CommonName of client"])
def test_a_body_that_is_not_a_json_object_is_a_transport_error(body: bytes) -> None:
    with pytest.raises(TransportError):
        decode_body(body)


def test_a_header_without_revision_reads_as_zero_and_a_bad_header_is_refused() -> None:
    assert header_revision({"header": {"raft_term": "2"}}) == 0
    assert header_revision({"header": {"revision": "7"}}) == 7
    with pytest.raises(TransportError):
        header_revision({"header": "7"})


def test_integers_keep_their_64_bits() -> None:
    assert integer({"ID": "7587869395823412345"}, "ID") == 7587869395823412345
    assert unb64({}, "value") == b""


@pytest.mark.parametrize(
    ("prefix", "end"),
    [(b"/a/", b"/a0"), (b"a\xff", b"b"), (b"\xff\xff", b"\x00"), (b"", b"\x00")],
)
def test_prefix_range_end_follows_etcd(prefix: bytes, end: bytes) -> None:
    assert prefix_range_end(prefix) == end


def test_conditions_become_etcd_compares() -> None:
    key = b64(b"k")
    assert compare(b"k", Absent()) == {
        "key": key, "result": "EQUAL", "target": "CREATE", "create_revision": "0"
    }  # fmt: skip
    assert compare(b"k", ModRevisionIs(9))["mod_revision"] == "9"
    assert compare(b"k", ValueIs(b"v")) == {
        "key": key, "result": "EQUAL", "target": "VALUE", "value": b64(b"v")
    }  # fmt: skip


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (Status.UNAVAILABLE, True),
        (Status.DEADLINE_EXCEEDED, True),
        (Status.UNAUTHENTICATED, True),
        (Status.INVALID_ARGUMENT, False),
        (Status.NOT_FOUND, False),
        (Status.PERMISSION_DENIED, False),
    ],
)
def test_gateway_status_codes_decide_failover_as_grpc_codes_did(
    code: Status, *, expected: bool
) -> None:
    assert retryable(GatewayError(code, "x")) is expected
