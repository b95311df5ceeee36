"""Typed, immutable view of one ``crm_mon`` snapshot, as seen from the node that ran it.

Values are built only by :func:`pgcm_common.pacemaker.parse_crm_mon`; everything here is
pure and synchronous. The one judgement this module makes is :attr:`ClusterState.primary`,
and it never guesses: anything but "quorum and exactly one promoted instance, nothing
moving" is reported as its own variant so callers must decide what ambiguity means.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias, TypeVar, final

__all__ = [
    "Ban",
    "ClusterState",
    "Failure",
    "FenceAction",
    "FenceStatus",
    "InTransition",
    "LegacyPgsqlAttributes",
    "NoPrimary",
    "NoQuorum",
    "Node",
    "NodeAttributes",
    "OutputFormat",
    "PgsqlDataStatus",
    "PgsqlStatus",
    "PrimaryObservation",
    "PromotionScore",
    "ResourceInstance",
    "Role",
    "SeveralPrimaries",
    "SinglePrimary",
]

_E = TypeVar("_E", bound=enum.Enum)

# Pacemaker's INFINITY: every score at or beyond it is clamped to it.
SCORE_INFINITY = 1_000_000


class OutputFormat(enum.Enum):
    """Which ``crm_mon`` XML dialect a snapshot was printed in."""

    OUTPUT_AS_XML = "output-as-xml"
    """Pacemaker ≥ 2.0 ``--output-as=xml``: root ``<pacemaker-result>``."""
    LEGACY_AS_XML = "as-xml"
    """Pacemaker 1.1 ``--as-xml`` (deprecated in 2.x): root ``<crm_mon>``."""


class Role(enum.Enum):
    """Role of one clone instance; Pacemaker < 2.1 names are normalised on parse."""

    PROMOTED = "Promoted"
    UNPROMOTED = "Unpromoted"
    PROMOTING = "Promoting"
    DEMOTING = "Demoting"
    STARTED = "Started"
    STARTING = "Starting"
    STOPPED = "Stopped"
    STOPPING = "Stopping"
    MIGRATING = "Migrating"
    UNKNOWN = "Unknown"

    @classmethod
    def from_crm_mon(cls, text: str) -> Role | None:
        """Return the role named ``text`` (old ``Master``/``Slave`` included), or None."""
        return _ROLE_ALIASES.get(text.lower())


_ROLE_ALIASES: dict[str, Role] = {
    **{role.value.lower(): role for role in Role},
    # Pacemaker 1.1 and 2.0 print the pre-2.1 names; the meaning is the same.
    "master": Role.PROMOTED,
    "slave": Role.UNPROMOTED,
}


class PgsqlStatus(enum.Enum):
    """``<rsc>-status`` of the legacy ``ocf:heartbeat:pgsql`` agent."""

    PRI = "PRI"
    HS_SYNC = "HS:sync"
    HS_ASYNC = "HS:async"
    HS_POTENTIAL = "HS:potential"
    HS_CONNECTED = "HS:connected"
    HS_ALONE = "HS:alone"
    STOP = "STOP"


class PgsqlDataStatus(enum.Enum):
    """``<rsc>-data-status`` of the legacy ``ocf:heartbeat:pgsql`` agent."""

    LATEST = "LATEST"
    STREAMING_SYNC = "STREAMING|SYNC"
    STREAMING_ASYNC = "STREAMING|ASYNC"
    STREAMING_POTENTIAL = "STREAMING|POTENTIAL"
    DISCONNECT = "DISCONNECT"


@final
@dataclass(frozen=True, slots=True)
class Node:
    """One cluster node as the asking node sees it."""

    name: str
    id: str
    """Corosync node id for cluster nodes (digits); remote nodes use their name."""
    online: bool
    standby: bool
    unclean: bool
    maintenance: bool
    is_dc: bool
    pending: bool = False
    shutdown: bool = False


@final
@dataclass(frozen=True, slots=True)
class ResourceInstance:
    """One instance of the promotable clone's primitive."""

    resource_id: str
    role: Role
    node: str | None
    """None when the instance runs nowhere (``Stopped``)."""
    active: bool
    failed: bool
    managed: bool
    blocked: bool


@final
@dataclass(frozen=True, slots=True)
class PromotionScore:
    """A ``master-<rsc>`` node attribute; ±INFINITY is ±:data:`SCORE_INFINITY`."""

    node: str
    score: int


@final
@dataclass(frozen=True, slots=True)
class NodeAttributes:
    """Every transient node attribute crm_mon printed for one node, in order."""

    node: str
    items: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        """Return the value of attribute ``name``, or None when it is not set."""
        for key, value in self.items:
            if key == name:
                return value
        return None


@final
@dataclass(frozen=True, slots=True)
class LegacyPgsqlAttributes:
    """The legacy pgsql agent's ``<rsc>-status`` and ``<rsc>-data-status`` of one node.

    The raw strings are kept because the agent grows values over time; the enums are
    None when a raw value is not one we know.
    """

    node: str
    status_raw: str | None
    data_status_raw: str | None

    @property
    def status(self) -> PgsqlStatus | None:
        """Return the parsed ``<rsc>-status``, or None when absent or unknown."""
        return _enum_or_none(PgsqlStatus, self.status_raw)

    @property
    def data_status(self) -> PgsqlDataStatus | None:
        """Return the parsed ``<rsc>-data-status``, or None when absent or unknown."""
        return _enum_or_none(PgsqlDataStatus, self.data_status_raw)

    @property
    def data_latest(self) -> bool:
        """Return whether the agent says this node holds the latest data (``LATEST``)."""
        return self.data_status is PgsqlDataStatus.LATEST


def _enum_or_none(kind: type[_E], raw: str | None) -> _E | None:
    if raw is None:
        return None
    try:
        return kind(raw)
    except ValueError:
        return None


@final
@dataclass(frozen=True, slots=True)
class Failure:
    """One entry of crm_mon's ``<failures>``: a failed resource operation."""

    op_key: str
    node: str
    task: str | None
    exitstatus: str | None
    exitreason: str | None
    exitcode: int | None


class FenceStatus(enum.Enum):
    """Where one fencing action stands (``fence_event/@status``)."""

    PENDING = "pending"
    FAILED = "failed"
    SUCCESS = "success"


# crm_mon 2.1.5 prints completion times in UTC as "2026-12-07 04:45:42Z"; other
# versions print an offset, with or without a space before it, or no zone at all.
_FENCE_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S%z", "%Y-%m-%d %H:%M:%S %z", "%Y-%m-%d %H:%M:%S")


@final
@dataclass(frozen=True, slots=True)
class FenceAction:
    """One entry of crm_mon's ``<fence_history>``: a fencing action and where it stands.

    Attributes:
        target: the node being (or that was) fenced.
        action: ``off``, ``reboot`` or ``on``.
        status: pending, failed or success.
        origin: the node whose request started it.
        client: the requesting daemon or tool (``pacemaker-controld.1234``,
            ``stonith_admin.5678``).
        delegate: the node that ran the fence device, when known.
        completed: when it finished, as crm_mon prints it; None while pending.
        exit_reason: why it failed, when the agent or fencer said.
        extended_status: Pacemaker's words for a failure (``No fence device``, ...);
            2.1 prints ``0`` on pending actions.
    """

    target: str
    action: str
    status: FenceStatus
    origin: str
    client: str
    delegate: str | None = None
    completed: str | None = None
    exit_reason: str | None = None
    extended_status: str | None = None

    @property
    def completed_time(self) -> datetime | None:
        """Return :attr:`completed` parsed (aware when crm_mon printed a zone), or None."""
        if self.completed is None:
            return None
        for pattern in _FENCE_TIME_FORMATS:
            try:
                return datetime.strptime(self.completed, pattern)  # noqa: DTZ007 - the zone is in the text when crm_mon prints one
            except ValueError:
                continue
        return None


def _resolves(success: FenceAction, failure: FenceAction, *, other_first: bool) -> bool:
    succeeded, failed = success.completed_time, failure.completed_time
    if succeeded is None or failed is None or (succeeded.tzinfo is None) != (failed.tzinfo is None):
        return other_first
    return succeeded >= failed


@final
@dataclass(frozen=True, slots=True)
class Ban:
    """One negative location constraint from crm_mon's ``<bans>``."""

    id: str
    resource: str
    node: str
    weight: int
    promoted_only: bool


@final
@dataclass(frozen=True, slots=True)
class SinglePrimary:
    """Quorum, exactly one promoted instance and no promotion or demotion under way."""

    node: str
    instance: ResourceInstance


@final
@dataclass(frozen=True, slots=True)
class NoPrimary:
    """Quorum, but no instance is promoted and none is being promoted or demoted."""


@final
@dataclass(frozen=True, slots=True)
class SeveralPrimaries:
    """Quorum, and more than one instance claims the promoted role."""

    nodes: tuple[str, ...]


@final
@dataclass(frozen=True, slots=True)
class InTransition:
    """Quorum, and some instance is promoting or demoting: the primary is about to change."""

    promoted: tuple[str, ...]
    promoting: tuple[str, ...]
    demoting: tuple[str, ...]


@final
@dataclass(frozen=True, slots=True)
class NoQuorum:
    """The asking node's partition has no quorum (or no DC): nothing it says is trusted.

    ``promoted`` lists what this partition still believes is promoted, for logs only.
    """

    promoted: tuple[str, ...]


PrimaryObservation: TypeAlias = (
    SinglePrimary | NoPrimary | SeveralPrimaries | InTransition | NoQuorum
)
"""What one snapshot says about the primary; match on it, never assume a variant."""


@final
@dataclass(frozen=True, slots=True)
class ClusterState:
    """One ``crm_mon`` snapshot: membership, quorum and the promotable clone.

    ``with_quorum`` and everything else describe the partition of the node that ran
    ``crm_mon``: a minority partition reports itself, not the cluster.
    """

    output_format: OutputFormat
    pacemaker_version: str | None
    dc: str | None
    with_quorum: bool
    nodes: tuple[Node, ...]
    resource_id: str
    clone_id: str
    instances: tuple[ResourceInstance, ...]
    promotion_scores: tuple[PromotionScore, ...]
    node_attributes: tuple[NodeAttributes, ...]
    legacy_pgsql: tuple[LegacyPgsqlAttributes, ...]
    failures: tuple[Failure, ...]
    bans: tuple[Ban, ...]
    last_change: str | None = None
    """``summary/last_change/@time``: when the CIB was last written, as crm_mon prints it
    (``Wed Nov 25 17:08:11 2026``, the printing node's local time, whole seconds). The
    same CIB version shows the same value on every node; crm_mon prints no CIB epoch."""
    resource_agent: str | None = None
    """The promotable primitive's agent (``ocf:heartbeat:pgsqlms``), when crm_mon says."""
    fencing: tuple[FenceAction, ...] = ()
    """crm_mon's ``<fence_history>`` in its order (newest first): pending and failed
    actions, and the latest success per target with ``--fence-history=2``."""
    fence_history_error: int | None = None
    """``fence_history/@status`` when crm_mon could not read the fencing history (the
    fencer's error code); None when it could, or printed no history at all."""

    @property
    def troubled_instances(self) -> tuple[ResourceInstance, ...]:
        """Return the instances Pacemaker marks failed or blocked (needing a human)."""
        return tuple(i for i in self.instances if i.failed or i.blocked)

    @property
    def pending_fencing(self) -> tuple[FenceAction, ...]:
        """Return the fencing actions still under way."""
        return tuple(f for f in self.fencing if f.status is FenceStatus.PENDING)

    def needs_attention(self) -> tuple[str, ...]:
        """Return one line per failed or blocked instance and pending fencing action.

        These stop Pacemaker from recovering on its own (a blocked instance) or mean it
        is about to power a node off (pending fencing): no switchover should start.
        """
        lines = [
            f"{i.resource_id} ({i.role.value}) on {i.node or 'no node'} is "
            + ", ".join(t for t, on in (("failed", i.failed), ("blocked", i.blocked)) if on)
            for i in self.troubled_instances
        ]
        lines += [
            f"fencing ({f.action}) of {f.target} pending, requested by {f.origin}"
            for f in self.pending_fencing
        ]
        return tuple(lines)

    @property
    def failed_fencing(self) -> tuple[FenceAction, ...]:
        """Return the failed fencing actions not followed by a success on the same target.

        A later success (any action: ``off`` after a failed ``reboot`` powers the node
        down as well) resolves a failure. "Later" is by completion time; when either
        time is missing or unreadable, by crm_mon's order, which lists the newest first.
        """
        failed: list[FenceAction] = []
        for index, action in enumerate(self.fencing):
            if action.status is not FenceStatus.FAILED:
                continue
            if not any(
                _resolves(other, action, other_first=other_index < index)
                for other_index, other in enumerate(self.fencing)
                if other.status is FenceStatus.SUCCESS and other.target == action.target
            ):
                failed.append(action)
        return tuple(failed)

    @property
    def last_change_time(self) -> datetime | None:
        """Return :attr:`last_change` parsed (naive, local time), or None."""
        if self.last_change is None:
            return None
        try:
            return datetime.strptime(self.last_change, "%a %b %d %H:%M:%S %Y")  # noqa: DTZ007 - crm_mon prints local time without a zone
        except ValueError:
            return None

    @property
    def primary(self) -> PrimaryObservation:
        """Return what this snapshot says about the primary, ambiguity included."""
        promoted = self._nodes_in(Role.PROMOTED)
        if not self.with_quorum:
            return NoQuorum(promoted=promoted)
        promoting = self._nodes_in(Role.PROMOTING)
        demoting = self._nodes_in(Role.DEMOTING)
        if promoting or demoting:
            return InTransition(promoted=promoted, promoting=promoting, demoting=demoting)
        if len(promoted) > 1:
            return SeveralPrimaries(nodes=promoted)
        for instance in self.instances:
            if instance.role is Role.PROMOTED and instance.node is not None:
                return SinglePrimary(node=instance.node, instance=instance)
        return NoPrimary()

    @property
    def primary_node(self) -> str | None:
        """Return the primary's node name only when :attr:`primary` is a SinglePrimary."""
        observation = self.primary
        return observation.node if isinstance(observation, SinglePrimary) else None

    def node(self, name: str) -> Node | None:
        """Return the node called ``name``, or None when crm_mon did not list it."""
        return next((node for node in self.nodes if node.name == name), None)

    def promotion_score(self, node: str) -> int | None:
        """Return ``master-<rsc>`` of ``node``, or None when it is not set."""
        return next((s.score for s in self.promotion_scores if s.node == node), None)

    def legacy_pgsql_of(self, node: str) -> LegacyPgsqlAttributes | None:
        """Return the legacy pgsql agent's attributes of ``node``, or None when absent."""
        return next((a for a in self.legacy_pgsql if a.node == node), None)

    def attributes_of(self, node: str) -> NodeAttributes | None:
        """Return every transient attribute of ``node``, or None when it has none."""
        return next((a for a in self.node_attributes if a.node == node), None)

    def _nodes_in(self, role: Role) -> tuple[str, ...]:
        return tuple(
            sorted(i.node for i in self.instances if i.role is role and i.node is not None)
        )
