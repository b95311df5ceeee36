from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pgcm_common.etcd import Deleted, KeyValue, RevisionGate, WatchEvent


def kv_at(revision: int, key: bytes = b"/k") -> KeyValue:
    return KeyValue(key, b"v", 1, revision, 1)


def test_revision_gate_drops_stale_and_replayed_events() -> None:
    gate = RevisionGate()
    assert [kv.mod_revision for kv in map(kv_at, (2, 2, 1, 3)) if gate.admit(kv)] == [2, 3]


def test_revision_gate_tracks_each_key_separately() -> None:
    gate = RevisionGate()
    assert gate.admit(kv_at(5, b"/a"))
    assert gate.admit(kv_at(3, b"/b"))
    assert not gate.admit(kv_at(4, b"/a"))
    assert gate.last_revision(b"/a") == 5
    assert gate.last_revision(b"/c") is None


def test_revision_gate_orders_deletions_with_puts() -> None:
    gate = RevisionGate()
    assert gate.admit(kv_at(4))
    assert not gate.admit(Deleted(b"/k", 3))
    assert gate.admit(Deleted(b"/k", 6))
    assert not gate.admit(kv_at(5))
    assert gate.admit(kv_at(7))


events = st.lists(
    st.tuples(st.sampled_from([b"/a", b"/b", b"/c"]), st.integers(1, 40), st.booleans()),
    max_size=60,
)


def as_event(key: bytes, revision: int, *, deleted: bool) -> WatchEvent:
    return Deleted(key, revision) if deleted else kv_at(revision, key)


@given(events)
def test_revision_gate_admits_exactly_the_events_newer_than_all_before(
    stream: list[tuple[bytes, int, bool]],
) -> None:
    gate = RevisionGate()
    highest: dict[bytes, int] = {}
    for key, revision, deleted in stream:
        expected = revision > highest.get(key, 0)
        assert gate.admit(as_event(key, revision, deleted=deleted)) is expected
        highest[key] = max(highest.get(key, 0), revision)


@given(events)
def test_revision_gate_output_is_strictly_increasing_per_key_and_replay_free(
    stream: list[tuple[bytes, int, bool]],
) -> None:
    gate = RevisionGate()
    admitted = [(k, r) for k, r, d in stream if gate.admit(as_event(k, r, deleted=d))]
    for key in {k for k, _ in admitted}:
        revisions = [r for k, r in admitted if k == key]
        assert revisions == sorted(set(revisions))
    # Replaying everything again admits nothing.
    assert not [1 for k, r, d in stream if gate.admit(as_event(k, r, deleted=d))]
