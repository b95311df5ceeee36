"""Bad request bodies and fields seen by pgcm-supervise's failover API: 0 crashes, 0 echoes.

Arbitrary bytes decoded as any request message either give a message whose every
field is in bounds, or a ``GRPCError`` with INVALID_ARGUMENT or RESOURCE_EXHAUSTED and
a short message that quotes none of the bytes sent. An arbitrary ``migrate_to`` target
is accepted by the bounds only when it could be a Pacemaker node name (at most 255
UTF-8 bytes, printable); a refusal names the field and never quotes the value.
"""

from __future__ import annotations

from typing import Final

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from hypothesis import example, given
from hypothesis import strategies as st

from pgcm_common.proto.failover import Empty, MigrateRequest, PauseRequest
from pgcm_supervise.errors import InvalidRequest
from pgcm_supervise.limits import MAX_NODE_NAME_BYTES, BoundedCodec, check_request

REQUEST_TYPES: Final = (Empty, PauseRequest, MigrateRequest)
REFUSED: Final = {Status.INVALID_ARGUMENT, Status.RESOURCE_EXHAUSTED}
CODEC: Final = BoundedCodec()

fields = st.sampled_from((b"\x08", b"\x0a", b"\x0d", b"\x10", b"\x12", b"\x1a", b"\x0b", b"\x0f"))
bodies = (
    st.binary(max_size=600)
    | st.lists(st.tuples(fields, st.binary(max_size=40)), max_size=8).map(
        lambda parts: b"".join(tag + body for tag, body in parts)
    )
    | st.integers(4000, 20_000).map(lambda size: bytes(MigrateRequest("n" * size)))
)


@given(st.sampled_from(REQUEST_TYPES), bodies)
@example(PauseRequest, b"\x0a\x03abc")  # a length-delimited int32 decodes into a list
@example(PauseRequest, b"\x0d\x01\x02\x03\x04")  # fixed32 for an int32
@example(MigrateRequest, b"\x0a\x02\xff\xfe")  # a target that is not UTF-8
@example(MigrateRequest, b"\x0b")  # a group start decodes into None
def test_any_body_decodes_in_bounds_or_is_refused_quoting_nothing(
    kind: type[Empty | PauseRequest | MigrateRequest], body: bytes
) -> None:
    try:
        message = CODEC.decode(body, kind)
    except GRPCError as exc:
        refusal = exc
    else:
        assert isinstance(message, kind)
        check_request(message)
        return
    assert refusal.status in REFUSED
    text = refusal.message or ""
    assert len(text) <= 100
    assert "nnnn" not in text


@given(st.text(max_size=400) | st.text(alphabet="n\u00e9\u20ac", max_size=300))
@example("n" * MAX_NODE_NAME_BYTES)
@example("n" * (MAX_NODE_NAME_BYTES + 1))
@example("pcmk1\n")
@example("\u00e9" * 128)
def test_a_target_passes_exactly_when_it_could_be_a_node_name(target: str) -> None:
    fits = len(target.encode("utf-8", "surrogatepass")) <= MAX_NODE_NAME_BYTES
    could_be_a_node = fits and target.isprintable()
    refusal: InvalidRequest | None = None
    try:
        check_request(MigrateRequest(target))
    except InvalidRequest as exc:
        refusal = exc
    assert (refusal is None) == could_be_a_node
    if refusal is not None:
        assert refusal.field == "target"
        assert target not in str(refusal)
