"""Bounds on what a caller of the failover API may send, checked before any work.

Every request of every rpc is small: the largest valid one is a ``MigrateRequest``
naming a node, a few hundred bytes. Anything bigger, undecodable or of the wrong
shape is refused before a handler acts on it, and nothing a caller sent is echoed
back or logged beyond a short escaped prefix (:func:`pgcm_common.untrusted.excerpt`):
a megabyte-long target once went whole into gRPC trailers, whose pure-Python HPACK
Huffman encoding is quadratic in the length, and stalled the whole server.

* A request message larger than :data:`MAX_REQUEST_BYTES`: RESOURCE_EXHAUSTED (gRPC's
  status for a message over the receiver's size limit).
* A message that does not decode, or a field of the wrong wire type: INVALID_ARGUMENT.
* A string field longer than its bound (:data:`STRING_FIELD_BYTES`, else
  :data:`MAX_STRING_BYTES`) or holding non-printable characters: INVALID_ARGUMENT.
* An integer field outside int32: INVALID_ARGUMENT.
* Request metadata (headers) larger than :data:`MAX_METADATA_BYTES` in all:
  RESOURCE_EXHAUSTED, before credentials are even looked at.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Final

from betterproto2 import Message
from grpclib.const import Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from typing_extensions import override

from pgcm_supervise.errors import InvalidRequest

__all__ = [
    "MAX_METADATA_BYTES",
    "MAX_NODE_NAME_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_STATUS_MESSAGE_CHARS",
    "MAX_STRING_BYTES",
    "STRING_FIELD_BYTES",
    "BoundedCodec",
    "check_request",
    "metadata_size",
]

# Pacemaker carries a node name in fixed buffers of 256 bytes, the terminating NUL
# included (``MAX_NAME`` in its cluster messaging layer): no node can have a longer name.
MAX_NODE_NAME_BYTES: Final = 255
# Any other string field a future request may add; ids and reasons fit comfortably.
MAX_STRING_BYTES: Final = 255
# A maintenance reason and its author are free text of up to 256 characters (checked by
# the handler), which UTF-8 may spell in up to 4 bytes each.
_FREE_TEXT_BYTES: Final = 4 * 256
STRING_FIELD_BYTES: Final[Mapping[str, int]] = {
    "target": MAX_NODE_NAME_BYTES,
    "reason": _FREE_TEXT_BYTES,
    "requested_by": _FREE_TEXT_BYTES,
}
# The largest valid request is a few hundred bytes; this leaves room for new fields.
MAX_REQUEST_BYTES: Final = 4096
# Our own clients send a token, a trace id and grpclib's few headers (< 1 KiB).
MAX_METADATA_BYTES: Final = 8192
# Status messages are ours, but some quote a (bounded) node name; clipped anyway.
MAX_STATUS_MESSAGE_CHARS: Final = 512
_INT32: Final = range(-(2**31), 2**31)


def check_request(message: Message) -> None:
    """Refuse a decoded request whose fields are of the wrong type or out of bounds.

    Raises:
        InvalidRequest: names the field; never quotes its value.
    """
    # betterproto2 messages are dataclasses; its base class does not say so to mypy.
    for spec in dataclasses.fields(message):  # type: ignore[arg-type]
        name = spec.name
        value: object = getattr(message, name)
        if isinstance(value, bool):
            continue  # any decoded bool is in range
        if isinstance(value, str):
            _check_string(name, value)
        elif isinstance(value, int) and not isinstance(value, bool):
            if value not in _INT32:
                raise InvalidRequest(name, "out of the int32 range")
        else:
            # A field sent with another wire type decodes into a list or bytes.
            raise InvalidRequest(name, f"has the wrong type ({type(value).__name__})")


def _check_string(name: str, value: str) -> None:
    limit = STRING_FIELD_BYTES.get(name, MAX_STRING_BYTES)
    # At most 4 bytes per character: skip encoding a value that is obviously too long.
    if len(value) > limit or len(value.encode("utf-8", errors="surrogatepass")) > limit:
        raise InvalidRequest(name, f"longer than {limit} bytes")
    if not value.isprintable():
        raise InvalidRequest(name, "holds non-printable characters")


def metadata_size(metadata: Mapping[str, str | bytes]) -> int:
    """Return the size of request metadata in bytes, names and values together."""
    total = 0
    for key, value in metadata.items():
        total += len(key) + len(value)
    return total


class BoundedCodec(CodecBase):
    """The server's protobuf codec: refuses oversized, malformed, out-of-bounds requests."""

    __content_subtype__ = "proto"

    @override
    def encode(self, message: Message, message_type: type[Message]) -> bytes:
        """Encode a reply (ours: trusted, no checks)."""
        if not isinstance(message, message_type):
            raise TypeError(
                f"reply must be a {message_type.__name__}, not {type(message).__name__}"
            )
        return bytes(message)

    @override
    def decode(self, data: bytes, message_type: type[Message]) -> Message:
        """Decode a request, then apply :func:`check_request`.

        Raises:
            GRPCError: RESOURCE_EXHAUSTED or INVALID_ARGUMENT (module docstring).
        """
        if len(data) > MAX_REQUEST_BYTES:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"request message of {len(data)} bytes exceeds the {MAX_REQUEST_BYTES} byte limit",
            )
        try:
            message = message_type.FromString(data)
        except Exception as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, "request message does not decode") from exc
        try:
            check_request(message)
        except InvalidRequest as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from exc
        return message
