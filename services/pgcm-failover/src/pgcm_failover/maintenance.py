"""Pacemaker's maintenance mode, switched through pgcm-supervise and recorded in etcd.

``pgcm-failover maintenance on --reason ...`` asks one supervise endpoint (the first
that answers; the property is cluster-wide) to set ``maintenance-mode``, then writes a
:class:`~pgcm_common.records.MaintenanceRecord` (on/off, why, who, when) at
``<ns>/maintenance``. ``status`` shows that record, and a switchover refuses to start
while it says on: with maintenance mode on Pacemaker moves nothing, so a switchover
would pause every client and then wait for a promotion that never comes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, final

import anyio

from pgcm_common.etcd import EtcdStore
from pgcm_common.records import KeyLayout, MaintenanceRecord, RecordError, now_utc
from pgcm_failover.errors import ClientsFailed

__all__ = [
    "MAX_REASON_LENGTH",
    "MaintenanceClient",
    "MaintenanceResult",
    "maintenance_refusal",
    "maintenance_state",
    "read_maintenance",
    "switch_maintenance",
]

MAX_REASON_LENGTH = 256
"""Longest reason (characters) supervise accepts; longer is refused before any call."""


class MaintenanceClient(Protocol):
    """A supervise endpoint that can switch Pacemaker's maintenance mode."""

    @property
    def endpoint(self) -> str:
        """Return the endpoint's name for messages."""
        ...

    async def set_maintenance(self, *, enabled: bool, reason: str, by: str) -> None:
        """Set maintenance mode (already so is success)."""
        ...


@final
@dataclass(frozen=True, slots=True)
class MaintenanceResult:
    """What ``maintenance on|off`` did: the record written, and the failed endpoints."""

    record: MaintenanceRecord
    skipped: tuple[str, ...] = ()


async def switch_maintenance(
    clients: Sequence[MaintenanceClient],
    store: EtcdStore,
    layout: KeyLayout,
    *,
    enabled: bool,
    reason: str,
    by: str,
    call_timeout_s: float,
) -> MaintenanceResult:
    """Ask the endpoints in turn until one sets the mode; then record it in etcd.

    Raises:
        ClientsFailed: every endpoint failed (nothing was recorded).
        EtcdError: the mode was set but the record could not be written.
    """
    failures: dict[str, Exception] = {}
    for client in clients:
        try:
            with anyio.fail_after(call_timeout_s):
                await client.set_maintenance(enabled=enabled, reason=reason, by=by)
        except Exception as exc:  # noqa: BLE001 - aggregated below
            failures[client.endpoint] = exc
            continue
        record = MaintenanceRecord(
            enabled=enabled, reason=reason, by=by, at=now_utc(), endpoint=client.endpoint
        )
        await store.put(layout.maintenance, record.to_json())
        return MaintenanceResult(record=record, skipped=tuple(failures))
    raise ClientsFailed("set_maintenance", failures)


async def read_maintenance(store: EtcdStore, layout: KeyLayout) -> MaintenanceRecord | None:
    """Return the last maintenance record, or None when there is none.

    Raises:
        RecordError: the key holds something else.
        EtcdError: etcd cannot be read.
    """
    kv = await store.get(layout.maintenance)
    return None if kv is None else MaintenanceRecord.from_json(kv.key, kv.value)


async def maintenance_state(store: EtcdStore, layout: KeyLayout) -> MaintenanceRecord | None:
    """Return the maintenance record to act on; an unreadable one counts as "on".

    Someone wrote garbage at the key: it may have meant "on", so refuse rather than guess.

    Raises:
        EtcdError: etcd cannot be read.
    """
    try:
        return await read_maintenance(store, layout)
    except RecordError as exc:
        return MaintenanceRecord(
            enabled=True, reason=f"unreadable record ({exc})", by="?", at=now_utc()
        )


def maintenance_refusal(record: MaintenanceRecord | None) -> str | None:
    """Return why a switchover must not start now (None: maintenance is off)."""
    if record is None or not record.enabled:
        return None
    return (
        f"Pacemaker is in maintenance mode (since {record.at.isoformat(timespec='seconds')} "
        f"by {record.by}: {record.reason}); run 'pgcm-failover maintenance off' first"
    )
