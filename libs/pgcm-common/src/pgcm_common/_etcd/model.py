"""Values, errors and the store seam (a Protocol) shared by the real client and the fake.

Error tree added here (below ``pgcm_common.errors``)::

    EtcdError
    ├── EtcdUnavailable
    ├── EtcdCompacted       a watch asked for history that compaction removed
    └── EtcdLeaseExpired    the lease is gone (expired or revoked)
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol, TypeAlias, final

from pgcm_common.errors import EtcdError

__all__ = [
    "Absent",
    "Condition",
    "Deleted",
    "EtcdCompacted",
    "EtcdLeaseExpired",
    "EtcdStore",
    "Guard",
    "KeyValue",
    "Lease",
    "Listing",
    "ModRevisionIs",
    "TxnResult",
    "ValueIs",
    "WatchBatch",
    "WatchEvent",
    "WatchHandle",
    "Write",
]


@final
@dataclass(frozen=True, slots=True)
class KeyValue:
    """A key as etcd stores it, at one revision.

    Attributes:
        key: the key.
        value: the value's bytes.
        create_revision: the revision that created the key (the lock's fencing token).
        mod_revision: the revision of the last change.
        version: the number of changes since creation (1 after creation).
        lease: the id of the attached lease, 0 for none.
    """

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@final
@dataclass(frozen=True, slots=True)
class Deleted:
    """A key was deleted (or its lease expired) at ``mod_revision``."""

    key: bytes
    mod_revision: int


WatchEvent: TypeAlias = KeyValue | Deleted


@final
@dataclass(frozen=True, slots=True)
class Listing:
    """The keys under a prefix and the store revision they were read at."""

    revision: int
    items: tuple[KeyValue, ...]


@final
@dataclass(frozen=True, slots=True)
class Lease:
    """A granted lease: its id and the TTL etcd granted."""

    id: int
    ttl: timedelta


@final
@dataclass(frozen=True, slots=True)
class WatchBatch:
    """One watch response: events in revision order, or none (a progress notification).

    ``revision`` is the store revision the response was sent at.
    """

    revision: int
    events: tuple[WatchEvent, ...]


@final
@dataclass(frozen=True, slots=True)
class ModRevisionIs:
    """Compare-and-put condition: the key's last change was at ``revision``."""

    revision: int


@final
@dataclass(frozen=True, slots=True)
class ValueIs:
    """Compare-and-put condition: the key exists and holds exactly ``value``."""

    value: bytes


@final
@dataclass(frozen=True, slots=True)
class Absent:
    """Compare-and-put condition: the key does not exist."""


Condition: TypeAlias = ModRevisionIs | ValueIs | Absent


@final
@dataclass(frozen=True, slots=True)
class Guard:
    """One comparison of a multi-key transaction: ``condition`` must hold for ``key``."""

    key: bytes
    condition: Condition


@final
@dataclass(frozen=True, slots=True)
class Write:
    """One put of a multi-key transaction (attached to ``lease`` when non-zero)."""

    key: bytes
    value: bytes
    lease: int = 0


@final
@dataclass(frozen=True, slots=True)
class TxnResult:
    """What a multi-key transaction did.

    Attributes:
        succeeded: every guard held and every write was applied.
        revision: the store revision after the transaction: the one revision shared by
            all its writes when it succeeded and wrote something, otherwise the
            revision the guards were evaluated at.
    """

    succeeded: bool
    revision: int


@final
class EtcdCompacted(EtcdError):
    """A watch asked for revisions that compaction already removed."""

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(f"etcd history compacted up to revision {compact_revision}")


@final
class EtcdLeaseExpired(EtcdError):
    """The lease expired or was revoked."""

    def __init__(self, lease_id: int) -> None:
        self.lease_id = lease_id
        super().__init__(f"etcd lease {lease_id:x} expired or was revoked")


class WatchHandle(Protocol):
    """One established watch stream (no retries: ``watch_keys`` adds those)."""

    @property
    def created_revision(self) -> int:
        """Return the store revision when the watch was created."""
        ...

    async def read(self) -> WatchBatch:
        """Wait for the next response.

        Raises:
            EtcdCompacted: the start revision was compacted.
            EtcdUnavailable: the stream broke.
        """
        ...


class EtcdStore(Protocol):
    """The etcd operations pgcm needs; the real client and the fake both provide them."""

    async def get(self, key: bytes) -> KeyValue | None:
        """Return the key, or None when it does not exist."""
        ...

    async def get_prefix(self, prefix: bytes) -> Listing:
        """Return every key starting with ``prefix`` (sorted) and the revision read at."""
        ...

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Write the key (attached to ``lease`` when non-zero); return the new revision."""
        ...

    async def put_if(
        self, key: bytes, value: bytes, condition: Condition, *, lease: int = 0
    ) -> bool:
        """Write the key only when ``condition`` holds (one transaction); return whether."""
        ...

    async def put_all_if(self, guards: Sequence[Guard], writes: Sequence[Write]) -> TxnResult:
        """Apply every write in one transaction only if every guard holds; else none.

        All writes share one revision, so no reader (get, watch) ever sees some of them
        without the others. Guards may name keys that are not written.

        Raises:
            ValueError: a key is written twice (etcd refuses that transaction).
            EtcdLeaseExpired: the guards held but a write's lease does not exist.
        """
        ...

    async def delete(self, key: bytes) -> bool:
        """Delete the key; return whether it existed."""
        ...

    async def grant_lease(self, ttl: timedelta) -> Lease:
        """Grant a lease of ``ttl`` (whole seconds, at least 1)."""
        ...

    async def keepalive_lease(self, lease_id: int) -> timedelta:
        """Refresh the lease once; return its new TTL.

        Raises:
            EtcdLeaseExpired: the lease no longer exists.
        """
        ...

    async def revoke_lease(self, lease_id: int) -> None:
        """Revoke the lease, deleting its keys (a lease already gone is fine)."""
        ...

    async def compact(self, revision: int) -> None:
        """Drop history before ``revision``."""
        ...

    def open_watch(
        self, key: bytes, *, prefix: bool, start_revision: int
    ) -> AbstractAsyncContextManager[WatchHandle]:
        """Open one watch on a key or prefix from ``start_revision`` (0: from now).

        Entering returns once the watch is established.
        """
        ...


def lease_seconds(ttl: timedelta) -> int:
    """Return ``ttl`` as etcd's whole seconds, at least 1."""
    return max(1, round(ttl.total_seconds()))


def check_writes(writes: Sequence[Write]) -> None:
    """Refuse a transaction that writes one key twice, as etcd does, before sending it.

    Raises:
        ValueError: a key appears in more than one write.
    """
    keys = [write.key for write in writes]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        msg = f"a transaction cannot write a key twice: {duplicates}"
        raise ValueError(msg)


def condition_holds(condition: Condition, current: KeyValue | None) -> bool:
    """Return whether ``condition`` holds for the key's current state (the fake uses it)."""
    match condition:
        case Absent():
            return current is None
        case ModRevisionIs(revision):
            # etcd compares a missing key's mod_revision as 0.
            return (0 if current is None else current.mod_revision) == revision
        case ValueIs(value):
            return current is not None and current.value == value
