"""Every switchover's record in etcd, kept for ``pgcm-failover history``.

The CLI writes one :class:`~pgcm_common.records.SwitchoverRecord` under
``<ns>/history/<start>-<pid>`` at the end of each switchover, also when it failed or
was interrupted, then deletes the oldest records beyond ``history_limit``. Keys sort
in start order, so the newest are the last under the prefix. Writing is best effort:
a switchover's outcome never depends on its record.
"""

from __future__ import annotations

import getpass
import os
import socket
from datetime import datetime

from pgcm_common.etcd import EtcdStore
from pgcm_common.records import KeyLayout, PhaseRecord, RecordError, SwitchoverRecord
from pgcm_failover.pipeline import Report

__all__ = ["operator_identity", "read_history", "switchover_record", "write_history"]


def operator_identity() -> str:
    """Return who runs this process, as ``user@host``."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (a bare container)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def switchover_record(
    report: Report,
    *,
    outcome: str,
    started_at: datetime,
    finished_at: datetime,
    total_s: float | None,
    by: str,
    pid: int,
) -> SwitchoverRecord:
    """Return the record of one finished (or failed, or interrupted) switchover."""
    target = report.target
    return SwitchoverRecord(
        started_at=started_at,
        finished_at=finished_at,
        outcome=outcome,
        by=by,
        pid=pid,
        old_primary=report.old_primary,
        planned_target=report.planned_target,
        target=None if target is None else target.node,
        target_address=None if target is None else target.address,
        paused_s=report.paused_seconds,
        total_s=total_s,
        phases=tuple(
            PhaseRecord(name=p.name, ok=p.ok, seconds=p.seconds, detail=p.detail or None)
            for p in report.phases
        ),
        proxies_acknowledged=tuple(report.proxies_acknowledged),
        error=report.error,
        needs_human=tuple(report.needs_human),
    )


async def write_history(
    store: EtcdStore, layout: KeyLayout, record: SwitchoverRecord, *, keep: int
) -> int:
    """Store ``record``, then delete the oldest records beyond ``keep``; return how many.

    The trim runs after the put, not in its transaction: a crash in between leaves one
    record too many, which the next run removes.

    Raises:
        EtcdError: etcd cannot be written (the caller logs it; the switchover is done).
    """
    await store.put(layout.history_entry(record.started_at, record.pid), record.to_json())
    listing = await store.get_prefix(layout.history_prefix)
    keys = sorted(kv.key for kv in listing.items)
    surplus = keys[: max(len(keys) - keep, 0)]
    for key in surplus:
        await store.delete(key)
    return len(surplus)


async def read_history(
    store: EtcdStore, layout: KeyLayout, *, limit: int
) -> tuple[list[SwitchoverRecord], list[str]]:
    """Return the newest ``limit`` records, newest first, and the unreadable keys.

    Raises:
        EtcdError: etcd cannot be read.
    """
    listing = await store.get_prefix(layout.history_prefix)
    newest_first = sorted(listing.items, key=lambda kv: kv.key, reverse=True)
    records: list[SwitchoverRecord] = []
    invalid: list[str] = []
    for kv in newest_first:
        if len(records) >= limit:
            break
        try:
            records.append(SwitchoverRecord.from_json(kv.key, kv.value))
        except RecordError:
            invalid.append(kv.key.decode(errors="replace"))
    return records, invalid
