"""Failed or blocked instances and fencing, as ``status`` shows them, and what to do.

Pacemaker stops helping in two situations an operator must hear about at once:

* an instance is **blocked** (typically its stop failed while fencing is off or
  failing): Pacemaker neither recovers nor moves it until a human cleans it up;
* a node is being **fenced** (or fencing failed): the node is about to be, or should
  have been, powered off, and the cluster waits for that before it recovers.

The facts come from the supervises' NodeStatus records; this module is pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from pgcm_common.records import FencingRecord, InstanceTrouble, NodeStatus

__all__ = ["PacemakerAttention", "pacemaker_attention", "unresolved_failed_fencing", "what_to_do"]

_PENDING = "pending"
_FAILED = "failed"
_SUCCESS = "success"


@final
@dataclass(frozen=True, slots=True)
class PacemakerAttention:
    """What ``status`` shows about instances and fencing.

    Attributes:
        instances: failed or blocked instances of the promotable resource.
        fencing: the fencing history (newest first) of the record it was taken from.
        fencing_from: the node whose record the history comes from.
        fencing_unknown: why that node could not read the fencing history.
    """

    instances: tuple[InstanceTrouble, ...] = ()
    fencing: tuple[FencingRecord, ...] = ()
    fencing_from: str | None = None
    fencing_unknown: str | None = None


def pacemaker_attention(
    view: NodeStatus | None, statuses: tuple[NodeStatus, ...]
) -> PacemakerAttention:
    """Collect troubled instances and fencing from the trusted view, else the freshest record.

    A minority partition's record still tells of fencing under way, so without a
    quorate view the freshest record of any writer is used.
    """
    source = view or max(statuses, key=lambda s: s.observed_at, default=None)
    if source is None:
        return PacemakerAttention()
    return PacemakerAttention(
        instances=source.troubled_instances,
        fencing=source.fencing,
        fencing_from=source.node,
        fencing_unknown=source.fencing_unknown,
    )


def unresolved_failed_fencing(fencing: tuple[FencingRecord, ...]) -> tuple[FencingRecord, ...]:
    """Return the failed actions with no later (listed earlier) success on the same node."""
    succeeded: set[str] = set()
    failed: list[FencingRecord] = []
    for record in fencing:
        if record.state == _SUCCESS:
            succeeded.add(record.target)
        elif record.state == _FAILED and record.target not in succeeded:
            failed.append(record)
    return tuple(failed)


def what_to_do(attention: PacemakerAttention) -> tuple[str, ...]:
    """Return the operator's next steps, one line each (empty when nothing is wrong)."""
    fencing_targets = {r.target for r in attention.fencing if r.state == _PENDING}
    steps = [_instance_step(i, being_fenced=i.node in fencing_targets) for i in attention.instances]
    steps += [
        f"Pacemaker is fencing {record.target} ({record.action}): wait for it. If it "
        f"does not finish, check the fence device (stonith_admin --history "
        f"{record.target}, the fencer's log). Only when {record.target} is powered off "
        f"for certain: stonith_admin --confirm {record.target} (confirming a node "
        f"that still runs PostgreSQL gives two primaries)."
        for record in attention.fencing
        if record.state == _PENDING
    ]
    steps += [
        f"Fencing of {record.target} failed: fix the fence device (stonith_admin --list "
        f"{record.target}); Pacemaker retries. Once {record.target} is fenced or proven "
        f"powered off, stonith_admin --cleanup --history {record.target} clears the record."
        for record in unresolved_failed_fencing(attention.fencing)
    ]
    if attention.fencing_unknown:
        steps.append(f"{attention.fencing_unknown}: check the fencer (pacemaker-fenced).")
    return tuple(steps)


def _instance_step(instance: InstanceTrouble, *, being_fenced: bool) -> str:
    where = instance.node or "its node"
    cleanup = f"crm_resource --cleanup --resource {instance.resource}" + (
        f" --node {instance.node}" if instance.node else ""
    )
    confirm = (
        f" If {instance.node} is hung or unreachable, power it off, make sure it is off, "
        f"then stonith_admin --confirm {instance.node}."
        if instance.node
        else ""
    )
    if instance.blocked:
        return (
            f"{instance.resource} on {where} is blocked: Pacemaker will neither recover nor "
            f"fail it over by itself. Fix the cause (that node's PostgreSQL and Pacemaker "
            f"logs; a hung PostgreSQL, a full disk), then {cleanup}.{confirm} Fencing "
            f"configured and working (stonith-enabled=true) avoids this state."
        )
    if being_fenced:
        return (
            f"{instance.resource} on {where} failed and {where} is being fenced: Pacemaker "
            f"recovers the resource on another node once the fencing completes."
        )
    return (
        f"{instance.resource} on {where} failed: Pacemaker is recovering it. If it stays "
        f"failed, fix the cause (that node's PostgreSQL and Pacemaker logs), then {cleanup}."
    )
