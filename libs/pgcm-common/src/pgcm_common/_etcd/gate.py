"""Per-key revision gate: drops stale and replayed watch events (pure, synchronous)."""

from __future__ import annotations

from typing import final

from pgcm_common._etcd.model import WatchEvent

__all__ = ["RevisionGate"]


@final
class RevisionGate:
    """Admit an event only when it is newer than the last admitted event of its key.

    A re-watch from ``last revision + 1``, a re-list after compaction, or a second
    source (polling) can all deliver an event again or out of order; the gate makes
    delivery at-most-once and monotonic per key.
    """

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[bytes, int] = {}

    def admit(self, event: WatchEvent) -> bool:
        """Return True (and remember it) when ``event`` is newer than the key's last one."""
        last = self._seen.get(event.key)
        if last is not None and event.mod_revision <= last:
            return False
        self._seen[event.key] = event.mod_revision
        return True

    def last_revision(self, key: bytes) -> int | None:
        """Return the mod revision of the key's last admitted event, if any."""
        return self._seen.get(key)
