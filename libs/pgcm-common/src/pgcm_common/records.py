"""pgcm's etcd data model: where each record lives and what it holds.

Every key is under the cluster namespace ``<ns>`` (``[cluster] namespace``)::

    <ns><master_key>           bare primary address, exactly as the original writes it
    <ns><master_key>.json      PrimaryRecord: who published which primary, seen when
    <ns>/supervise/<node>      NodeStatus of each supervise (leased: vanishes with it)
    <ns>/proxies/<proxy id>    ProxyAck of each proxy (leased: vanishes with it)
    <ns>/lock                  the failover lock (pgcm_common.etcd.EtcdLock)
    <ns>/maintenance           MaintenanceRecord: the last maintenance on/off, who, why
    <ns>/hold                  HoldRecord while the primary is lost and no new one is
                               published (leased: vanishes at its deadline at the latest)
    <ns>/history/<start>-<pid> SwitchoverRecord of each pgcm-failover run (bounded: the
                               CLI keeps the newest ``history_limit``)

The JSON records are parsed at the edge with :meth:`from_json`, which raises
:class:`RecordError` for anything malformed (they are untrusted input like any etcd
value). Unknown fields are ignored so that a newer writer does not break an older
reader during a rolling upgrade.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Self, final

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from pgcm_common._etcd.lock import lock_key
from pgcm_common.errors import PgcmError

__all__ = [
    "FencingRecord",
    "HoldRecord",
    "InstanceTrouble",
    "KeyLayout",
    "MaintenanceRecord",
    "NodeRole",
    "NodeStatus",
    "PhaseRecord",
    "PostgresStatus",
    "PrimaryRecord",
    "ProxyAck",
    "RecordError",
    "ReplicationPeer",
    "SwitchoverRecord",
    "now_utc",
]


def now_utc() -> datetime:
    """Return the current time, timezone-aware in UTC (records never hold naive times)."""
    return datetime.now(UTC)


@final
class RecordError(PgcmError):
    """An etcd value that should hold a pgcm record does not."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"malformed record at {key!r}: {problem}")


@final
class KeyLayout:
    """The etcd keys of one cluster, computed once from the namespace and master key."""

    __slots__ = (
        "history_prefix",
        "hold",
        "lock",
        "maintenance",
        "master",
        "master_record",
        "namespace",
        "proxies_prefix",
        "supervise_prefix",
    )

    def __init__(self, namespace: str = "", master_key: str = "/master") -> None:
        self.namespace = namespace.rstrip("/")
        self.master = f"{self.namespace}{master_key}".encode()
        self.master_record = self.master + b".json"
        self.proxies_prefix = f"{self.namespace}/proxies/".encode()
        self.supervise_prefix = f"{self.namespace}/supervise/".encode()
        self.lock = lock_key(self.namespace)
        self.history_prefix = f"{self.namespace}/history/".encode()
        self.maintenance = f"{self.namespace}/maintenance".encode()
        self.hold = f"{self.namespace}/hold".encode()

    def proxy_ack(self, proxy_id: str) -> bytes:
        """Return the key of one proxy's acknowledgement."""
        return self.proxies_prefix + _safe_segment(proxy_id)

    def node_status(self, node: str) -> bytes:
        """Return the key of one supervise's node status."""
        return self.supervise_prefix + _safe_segment(node)

    def history_entry(self, started_at: datetime, pid: int) -> bytes:
        """Return the key of one switchover's record; keys sort in start order."""
        stamp = started_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        return self.history_prefix + f"{stamp}-{pid}".encode()


def _safe_segment(name: str) -> bytes:
    if not name or "/" in name or not name.isprintable() or name in {".", ".."}:
        raise ValueError(f"not usable as one etcd key segment: {name!r}")
    return name.encode()


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    @classmethod
    def from_json(cls, key: bytes | str, raw: bytes) -> Self:
        """Parse one etcd value.

        Raises:
            RecordError: not JSON, or fields missing or of the wrong type.
        """
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            shown = key.decode(errors="replace") if isinstance(key, bytes) else key
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "<value>"
            raise RecordError(shown, f"{where}: {first['msg']}") from exc

    def to_json(self) -> bytes:
        """Serialise for etcd (compact JSON, stable field order)."""
        return self.model_dump_json().encode()


@final
class PrimaryRecord(_Record):
    """The richer record published beside the bare primary address."""

    node: str
    address: str
    with_quorum: bool
    dc: str | None
    writer: str = Field(description="node name of the supervise that wrote the record")
    observed_at: AwareDatetime
    pacemaker_last_change: str | None = Field(
        default=None, description="crm_mon's summary/last_change time (the CIB's last write)"
    )


@final
class ProxyAck(_Record):
    """What one proxy applied: PgBouncer now routes to ``host`` (etcd revision ``revision``)."""

    proxy_id: str
    host: str
    revision: int
    applied_at: AwareDatetime
    pgbouncers: tuple[str, ...] = ()


@final
class NodeRole(_Record):
    """One node as Pacemaker sees it from the writer's side."""

    name: str
    online: bool
    role: str
    promotion_score: int | None = None
    data_status: str | None = Field(
        default=None,
        description="the legacy ocf:heartbeat:pgsql agent's <rsc>-data-status of this node "
        "(LATEST, STREAMING|SYNC, ...), raw; None with PAF or when unset",
    )


@final
class ReplicationPeer(_Record):
    """One row of ``pg_stat_replication`` on the primary."""

    application_name: str
    state: str
    sync_state: str
    lag_bytes: int | None = None
    lag_s: float | None = Field(
        default=None,
        description="replay_lag in seconds; None when PostgreSQL has no recent measurement "
        "(an idle standby) or the writer predates the field",
    )


@final
class PostgresStatus(_Record):
    """The local PostgreSQL as supervise sees it (optional: needs a local connection)."""

    in_recovery: bool
    replication: tuple[ReplicationPeer, ...] = ()
    oldest_transaction_age_s: float | None = None
    timeline: int | None = Field(
        default=None,
        description="the timeline this PostgreSQL writes (primary) or receives (standby); "
        "None when unknown or the writer predates the field",
    )


@final
class InstanceTrouble(_Record):
    """An instance of the promotable resource that Pacemaker marks failed or blocked.

    A blocked instance (typically a stop that failed while fencing is off or failing)
    is left alone by Pacemaker: no recovery, no failover, until a human acts.
    """

    resource: str
    node: str | None
    role: str
    failed: bool
    blocked: bool
    managed: bool = True

    def describe(self) -> str:
        """Return one line naming the instance and what is wrong with it."""
        flags = [
            text
            for text, on in (
                ("failed", self.failed),
                ("blocked", self.blocked),
                ("unmanaged", not self.managed),
            )
            if on
        ]
        return f"{self.resource} ({self.role}) on {self.node or 'no node'}: {', '.join(flags)}"


@final
class FencingRecord(_Record):
    """One fencing action from Pacemaker's fencing history, as crm_mon printed it."""

    target: str
    action: str
    state: str = Field(description="pending, failed or success")
    origin: str = Field(description="the node whose request started it")
    client: str | None = Field(default=None, description="the requesting daemon or tool")
    delegate: str | None = Field(default=None, description="the node that ran the device")
    completed: str | None = Field(default=None, description="when it finished (crm_mon's text)")
    reason: str | None = Field(default=None, description="why it failed, when known")

    def describe(self) -> str:
        """Return one line: what, on whom, by whom, where it stands."""
        by = f"requested by {self.origin}"
        if self.delegate:
            by += f", run by {self.delegate}"
        when = f" at {self.completed}" if self.completed else ""
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.action} of {self.target} {self.state}{when}{why}; {by}"


@final
class NodeStatus(_Record):
    """One supervise's view: Pacemaker, its PgBouncer and (optionally) its PostgreSQL."""

    node: str
    address: str | None
    observed_at: AwareDatetime
    with_quorum: bool
    dc: str | None
    primary: str | None
    nodes: tuple[NodeRole, ...] = ()
    move_constraints: tuple[str, ...] = ()
    pgbouncer_paused: bool | None = None
    postgres: PostgresStatus | None = None
    problem: str | None = Field(default=None, description="why the view is incomplete")
    resource_agent: str | None = Field(
        default=None,
        description="agent of the promotable resource, e.g. ocf:heartbeat:pgsqlms (PAF) or "
        "ocf:heartbeat:pgsql (legacy); None when the writer does not say",
    )
    troubled_instances: tuple[InstanceTrouble, ...] = Field(
        default=(),
        description="instances of the promotable resource Pacemaker marks failed or blocked; "
        "empty when there are none or the writer predates the field",
    )
    fencing: tuple[FencingRecord, ...] = Field(
        default=(),
        description="Pacemaker's fencing history as crm_mon prints it (pending, failed and "
        "the latest success per node), newest first",
    )
    fencing_unknown: str | None = Field(
        default=None, description="why the fencing history could not be read, when it could not"
    )

    @property
    def pending_fencing(self) -> tuple[FencingRecord, ...]:
        """Return the fencing actions still under way."""
        return tuple(f for f in self.fencing if f.state == "pending")


@final
class PhaseRecord(_Record):
    """One timed phase of a recorded switchover."""

    name: str
    ok: bool
    seconds: float | None
    detail: str | None = None


@final
class SwitchoverRecord(_Record):
    """What one pgcm-failover switchover did, kept in etcd for ``pgcm-failover history``."""

    started_at: AwareDatetime
    finished_at: AwareDatetime
    outcome: str = Field(description="succeeded, rolled_back or needs_human")
    by: str = Field(description="who ran it: user@host")
    pid: int
    old_primary: str | None = None
    planned_target: str | None = None
    target: str | None = None
    target_address: str | None = None
    paused_s: float | None = None
    total_s: float | None = None
    phases: tuple[PhaseRecord, ...] = ()
    proxies_acknowledged: tuple[str, ...] = ()
    error: str | None = None
    needs_human: tuple[str, ...] = ()


@final
class MaintenanceRecord(_Record):
    """The last change of Pacemaker's maintenance mode made through pgcm-failover."""

    enabled: bool
    reason: str
    by: str = Field(description="who changed it: user@host")
    at: AwareDatetime
    endpoint: str | None = Field(default=None, description="the supervise that set it")


@final
class HoldRecord(_Record):
    """The primary at ``lost_address`` is lost and no new one is published yet.

    Written by a supervise whose Pacemaker partition has quorum (etcd's own quorum is
    needed to write it at all), on a lease that ends at ``deadline``. While it names the
    address a proxy routes to, that proxy's PgBouncers hold new transactions (PAUSE)
    instead of failing them against a dead server; they resume as soon as the new
    primary is applied, the record goes, or the deadline passes.
    """

    lost_node: str = Field(max_length=255)
    lost_address: str = Field(max_length=255)
    reason: str = Field(max_length=1024, description="what supervise saw, for humans")
    since: AwareDatetime
    deadline: AwareDatetime
    writer: str = Field(max_length=255, description="node name of the supervise that wrote it")
    pacemaker_last_change: str | None = Field(
        default=None,
        max_length=64,
        description="crm_mon's summary/last_change time of the view that saw the loss",
    )
