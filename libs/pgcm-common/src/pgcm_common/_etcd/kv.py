"""Key-value requests on one endpoint: reads, writes, transactions, compaction.

Each function is one attempt on one :class:`EndpointClient` and returns our model types;
the store runs reads hedged and writes through failover. Conditions and guards become
the gateway's ``Compare`` messages (:func:`codec.compare`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import final

from pgcm_common._etcd.codec import (
    JsonObject,
    b64,
    compare,
    header_revision,
    integer,
    key_value,
    prefix_range_end,
)
from pgcm_common._etcd.failures import TransportError, details
from pgcm_common._etcd.leases import raise_lease_error
from pgcm_common._etcd.model import (
    Condition,
    Guard,
    KeyValue,
    Listing,
    TxnResult,
    Write,
    check_writes,
)
from pgcm_common._etcd.transport import EndpointClient

__all__ = ["Transaction", "compact", "delete", "get", "get_prefix", "put", "put_if"]


async def get(client: EndpointClient, key: bytes) -> KeyValue | None:
    """Return the key, or None when it does not exist."""
    answer = await client.call("/v3/kv/range", {"key": b64(key)})
    kvs = _kvs(answer)
    return key_value(kvs[0]) if kvs else None


async def get_prefix(client: EndpointClient, prefix: bytes) -> Listing:
    """Return every key under ``prefix`` in key order and the revision read at."""
    answer = await client.call(
        "/v3/kv/range",
        {
            "key": b64(prefix),
            "range_end": b64(prefix_range_end(prefix)),
            "sort_order": "ASCEND",
            "sort_target": "KEY",
        },
    )
    items = tuple(key_value(kv) for kv in _kvs(answer))
    return Listing(revision=header_revision(answer), items=items)


async def put(client: EndpointClient, key: bytes, value: bytes, lease: int) -> int:
    """Write the key; return the revision of the write.

    Raises:
        EtcdLeaseExpired: ``lease`` does not exist.
    """
    try:
        answer = await client.call("/v3/kv/put", _put(key, value, lease))
    except Exception as exc:
        raise_lease_error(exc, lease)
        raise
    return header_revision(answer)


async def put_if(
    client: EndpointClient, key: bytes, value: bytes, condition: Condition, lease: int
) -> bool:
    """Write the key in one transaction only if ``condition`` holds; return whether.

    Raises:
        EtcdLeaseExpired: ``lease`` does not exist.
    """
    txn = Transaction([Guard(key, condition)], [Write(key, value, lease)])
    return (await txn.send(client)).succeeded


@final
class Transaction:
    """A multi-key transaction built once, sent by :meth:`send` (possibly more than once)."""

    def __init__(self, guards: Sequence[Guard], writes: Sequence[Write]) -> None:
        """Build the request.

        Raises:
            ValueError: a key is written twice.
        """
        check_writes(writes)
        self._request: JsonObject = {
            "compare": [compare(guard.key, guard.condition) for guard in guards],
            "success": [{"request_put": _put(w.key, w.value, w.lease)} for w in writes],
        }
        # etcd's error does not say which lease was missing: name the first one.
        self._first_lease = next((w.lease for w in writes if w.lease), 0)

    async def send(self, client: EndpointClient) -> TxnResult:
        """Send the transaction once on ``client``.

        Raises:
            EtcdLeaseExpired: a write's lease does not exist.
        """
        try:
            answer = await client.call("/v3/kv/txn", self._request)
        except Exception as exc:
            raise_lease_error(exc, self._first_lease)
            raise
        # proto3 JSON leaves out false: a failed compare has no "succeeded" at all.
        return TxnResult(
            succeeded=answer.get("succeeded") is True, revision=header_revision(answer)
        )


async def delete(client: EndpointClient, key: bytes) -> bool:
    """Delete the key; return whether it existed."""
    answer = await client.call("/v3/kv/deleterange", {"key": b64(key)})
    return integer(answer, "deleted") > 0


async def compact(client: EndpointClient, revision: int) -> None:
    """Drop history before ``revision``; a revision already compacted is fine."""
    try:
        await client.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})
    except Exception as exc:
        if "compacted" not in details(exc):
            raise


def _put(key: bytes, value: bytes, lease: int) -> JsonObject:
    message: JsonObject = {"key": b64(key), "value": b64(value)}
    if lease:
        message["lease"] = str(lease)
    return message


def _kvs(answer: JsonObject) -> list[JsonObject]:
    kvs = answer.get("kvs", [])
    if not isinstance(kvs, list) or not all(isinstance(kv, dict) for kv in kvs):
        raise TransportError(f"etcd gateway range answer has malformed kvs: {str(answer)[:200]}")
    return kvs
