"""etcd for pgcm: a failover client, a resilient watch, a revision gate and a lease lock.

Writes are plain puts, compare-and-puts of one key (``put_if`` with a :data:`Condition`)
or multi-key transactions (``put_all_if`` with :class:`Guard` s and :class:`Write` s,
all applied at one revision or none).

The seam is :class:`EtcdStore` (a Protocol): :func:`open_etcd` yields the real one
(etcd's JSON gateway over HTTP/1.1, see docs/adr/0006-etcd-json-gateway.md) and
``pgcm_testkit.fakes.etcd`` has the in-memory fake; both pass
``tests/contract/test_etcd_store_contract.py``.
"""

from __future__ import annotations

from pgcm_common._etcd.client import GatewayStore, open_etcd
from pgcm_common._etcd.gate import RevisionGate
from pgcm_common._etcd.lock import EtcdLock, LockHolder, LockStatus, lock_key, read_lock_status
from pgcm_common._etcd.model import (
    Absent,
    Condition,
    Deleted,
    EtcdCompacted,
    EtcdLeaseExpired,
    EtcdStore,
    Guard,
    KeyValue,
    Lease,
    Listing,
    ModRevisionIs,
    TxnResult,
    ValueIs,
    WatchBatch,
    WatchEvent,
    WatchHandle,
    Write,
)
from pgcm_common._etcd.settings import EtcdEndpoint, EtcdSettings
from pgcm_common._etcd.watch import EventSink, follow_keys, watch_keys
from pgcm_common.errors import EtcdError, EtcdUnavailable

__all__ = [
    "Absent",
    "Condition",
    "Deleted",
    "EtcdCompacted",
    "EtcdEndpoint",
    "EtcdError",
    "EtcdLeaseExpired",
    "EtcdLock",
    "EtcdSettings",
    "EtcdStore",
    "EtcdUnavailable",
    "EventSink",
    "GatewayStore",
    "Guard",
    "KeyValue",
    "Lease",
    "Listing",
    "LockHolder",
    "LockStatus",
    "ModRevisionIs",
    "RevisionGate",
    "TxnResult",
    "ValueIs",
    "WatchBatch",
    "WatchEvent",
    "WatchHandle",
    "Write",
    "follow_keys",
    "lock_key",
    "open_etcd",
    "read_lock_status",
    "watch_keys",
]
