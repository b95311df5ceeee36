"""etcd's JSON gateway encoding: bytes as base64, int64 as strings, defaults left out.

The gateway renders etcd's protobuf messages with protobuf's JSON mapping: ``bytes``
fields are base64 text, 64-bit integers are decimal strings, and a field holding its
default (an empty value, a zero lease, ``false``) is not sent at all. Everything here is
pure: it builds request bodies and reads answers into pgcm's model types, and refuses
an answer that does not have the shape etcd gives (:class:`TransportError`: whatever
sent it is not an etcd gateway one can trust).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from pgcm_common._etcd.failures import TransportError
from pgcm_common._etcd.model import Absent, Condition, KeyValue, ModRevisionIs, ValueIs

__all__ = [
    "JsonObject",
    "b64",
    "compare",
    "decode_body",
    "encode_body",
    "header_revision",
    "integer",
    "key_value",
    "obj",
    "prefix_range_end",
    "unb64",
]

JsonObject = dict[str, Any]


def b64(data: bytes) -> str:
    """Return ``data`` as the gateway's base64 text."""
    return base64.b64encode(data).decode("ascii")


def unb64(message: Mapping[str, Any], field: str) -> bytes:
    """Return the base64 ``field`` of ``message`` as bytes (absent: empty).

    Raises:
        TransportError: the field is not base64 text.
    """
    raw = message.get(field, "")
    if not isinstance(raw, str):
        raise TransportError(f"etcd gateway field {field!r} is not base64 text: {raw!r:.80}")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TransportError(f"etcd gateway field {field!r} is not base64: {raw!r:.80}") from exc


def integer(message: Mapping[str, Any], field: str) -> int:
    """Return the int64 ``field`` of ``message`` (a decimal string; absent: 0).

    Raises:
        TransportError: the field is not an integer.
    """
    raw = message.get(field, 0)
    # bool is an int to Python, but never one to etcd.
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise TransportError(f"etcd gateway field {field!r} is not an integer: {raw!r:.80}")
    try:
        return int(raw)
    except ValueError as exc:
        raise TransportError(
            f"etcd gateway field {field!r} is not an integer: {raw!r:.80}"
        ) from exc


def obj(message: Mapping[str, Any], field: str) -> JsonObject:
    """Return the message-typed ``field`` of ``message`` (absent: empty).

    Raises:
        TransportError: the field is not a JSON object.
    """
    raw = message.get(field, {})
    if not isinstance(raw, dict):
        raise TransportError(f"etcd gateway field {field!r} is not an object: {raw!r:.80}")
    return raw


def header_revision(message: Mapping[str, Any]) -> int:
    """Return the store revision in the response ``header`` of ``message``."""
    return integer(obj(message, "header"), "revision")


def key_value(message: Mapping[str, Any]) -> KeyValue:
    """Read one ``mvccpb.KeyValue`` message."""
    return KeyValue(
        key=unb64(message, "key"),
        value=unb64(message, "value"),
        create_revision=integer(message, "create_revision"),
        mod_revision=integer(message, "mod_revision"),
        version=integer(message, "version"),
        lease=integer(message, "lease"),
    )


def prefix_range_end(prefix: bytes) -> bytes:
    """Return the ``range_end`` that selects every key starting with ``prefix``.

    etcd's rule: the prefix with its last byte below 0xff incremented (and the rest
    dropped); all 0xff (or empty) means "to the end of the key space", a NUL byte.
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\x00"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def compare(key: bytes, condition: Condition) -> JsonObject:
    """Return the ``Compare`` message that holds exactly when ``condition`` does."""
    base: JsonObject = {"key": b64(key), "result": "EQUAL"}
    match condition:
        case Absent():
            return base | {"target": "CREATE", "create_revision": "0"}
        case ModRevisionIs(mod):
            return base | {"target": "MOD", "mod_revision": str(mod)}
        case ValueIs(value):
            return base | {"target": "VALUE", "value": b64(value)}


def encode_body(message: Mapping[str, Any]) -> bytes:
    """Return a request message as the gateway's JSON body."""
    return json.dumps(message, separators=(",", ":")).encode()


def decode_body(body: bytes) -> JsonObject:
    """Return a JSON object the gateway sent.

    Raises:
        TransportError: the body is not a JSON object.
    """
    try:
        decoded = json.loads(body)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError alike
        raise TransportError(f"not a JSON answer from the etcd gateway: {body[:80]!r}") from exc
    if not isinstance(decoded, dict):
        raise TransportError(f"not a JSON object from the etcd gateway: {body[:80]!r}")
    return decoded
