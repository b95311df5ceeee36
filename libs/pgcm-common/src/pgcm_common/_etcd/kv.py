"""Key-value requests on one connection: reads, writes, transactions, compaction.

Each function is one attempt on one :class:`ChannelClient` and returns our model types;
the store runs reads hedged and writes through failover. Conditions and guards become
aetcd's compare builders here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import final

import aetcd.exceptions
import aetcd.rpc
import aetcd.transactions
import grpc.aio

from pgcm_common._etcd.channel import ChannelClient
from pgcm_common._etcd.failures import details
from pgcm_common._etcd.leases import raise_lease_error
from pgcm_common._etcd.model import (
    Absent,
    Condition,
    Guard,
    KeyValue,
    Listing,
    ModRevisionIs,
    TxnResult,
    ValueIs,
    Write,
    check_writes,
)

__all__ = [
    "Transaction",
    "compact",
    "compare",
    "delete",
    "get",
    "get_prefix",
    "put",
    "put_if",
]


async def get(client: ChannelClient, key: bytes) -> KeyValue | None:
    """Return the key, or None when it does not exist."""
    found = await client.get(key)
    return None if found is None else KeyValue.from_etcd(found)


async def get_prefix(client: ChannelClient, prefix: bytes) -> Listing:
    """Return every key under ``prefix`` in key order and the revision read at."""
    result = await client.get_prefix(prefix, sort_order="ascend", sort_target="key")
    items = tuple(KeyValue.from_etcd(kv) for kv in result.kvs)
    return Listing(revision=int(result.header.revision), items=items)


async def put(client: ChannelClient, key: bytes, value: bytes, lease: int) -> int:
    """Write the key; return the revision of the write.

    Raises:
        EtcdLeaseExpired: ``lease`` does not exist.
    """
    try:
        result = await client.put(key, value, lease=lease or None)
    except aetcd.exceptions.ClientError as exc:
        raise_lease_error(exc, lease)
        raise
    return int(result.header.revision)


async def put_if(
    client: ChannelClient,
    key: bytes,
    value: bytes,
    compare: aetcd.transactions.BaseCompare,
    lease: int,
) -> bool:
    """Write the key in one transaction only if ``compare`` holds; return whether.

    Raises:
        EtcdLeaseExpired: ``lease`` does not exist.
    """
    try:
        succeeded, _ = await client.transaction(
            compare=[compare],
            success=[aetcd.transactions.Put(key, value, lease=lease or None)],
            failure=[],
        )
    except aetcd.exceptions.ClientError as exc:
        raise_lease_error(exc, lease)
        raise
    return bool(succeeded)


def compare(key: bytes, condition: Condition) -> aetcd.transactions.BaseCompare:
    """Return aetcd's compare for ``condition`` on ``key``."""
    built: aetcd.transactions.BaseCompare
    match condition:
        case Absent():
            built = aetcd.transactions.Create(key) == 0
        case ModRevisionIs(revision):
            built = aetcd.transactions.Mod(key) == revision
        case ValueIs(value):
            built = aetcd.transactions.Value(key) == value
    return built


@final
class Transaction:
    """A multi-key transaction built once, sent to the KV stub by :meth:`send`.

    The request goes to the KV stub directly (aetcd's compare builders, our own
    request) because ``aetcd.Client.transaction`` drops the response header, and with
    it the revision of the writes.
    """

    def __init__(self, guards: Sequence[Guard], writes: Sequence[Write]) -> None:
        """Build the request.

        Raises:
            ValueError: a key is written twice.
        """
        check_writes(writes)
        compares = [compare(guard.key, guard.condition).build_message() for guard in guards]
        puts = [
            aetcd.rpc.RequestOp(
                request_put=aetcd.rpc.PutRequest(key=w.key, value=w.value, lease=w.lease)
            )
            for w in writes
        ]
        self._request = aetcd.rpc.TxnRequest(compare=compares, success=puts, failure=[])
        # etcd's error does not say which lease was missing: name the first one.
        self._first_lease = next((w.lease for w in writes if w.lease), 0)

    async def send(self, client: ChannelClient, timeout_s: float) -> TxnResult:
        """Send the transaction once on ``client``.

        Raises:
            EtcdLeaseExpired: a write's lease does not exist.
        """
        try:
            response = await client.kvstub.Txn(
                self._request, timeout=timeout_s, metadata=client.metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise_lease_error(exc, self._first_lease)
            raise
        return TxnResult(succeeded=bool(response.succeeded), revision=int(response.header.revision))


async def delete(client: ChannelClient, key: bytes) -> bool:
    """Delete the key; return whether it existed."""
    return await client.delete(key) is not None


async def compact(client: ChannelClient, revision: int) -> None:
    """Drop history before ``revision``; a revision already compacted is fine."""
    try:
        await client.compact(revision, physical=True)
    except aetcd.exceptions.ClientError as exc:
        if "compacted" not in details(exc):
            raise
