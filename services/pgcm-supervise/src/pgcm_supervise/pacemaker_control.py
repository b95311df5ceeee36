"""Move and un-move the primary with ``crm_resource``, and choose where it goes.

``crm_resource --resource <clone> --move --promoted --node <n>`` adds a ``cli-prefer``
location constraint for the promoted role (crmsh's ``crm resource move`` would create a
``role=Started`` one, and a plain ``--move`` fails with "Requested item already exists",
see docs/lab.md); ``--clear`` removes every ``cli-prefer``/``cli-ban`` of the resource.

``crm_resource --move`` also checks the node and the resource's current placement,
which costs it a full read of the cluster's status: 60-135 ms per move on an idle lab
node against 35-45 ms for ``cibadmin`` writing the same constraint. The failover API has
made those checks already (:func:`choose_target` on a fresh crm_mon read), so it writes
the constraint with ``cibadmin`` (:meth:`PacemakerControl.prefer_promoted`) and keeps
``crm_resource`` for what only it does: dropping a ban on the target, and as the fallback
when ``cibadmin`` refuses (a Pacemaker whose schema predates the ``Promoted`` role).

:class:`PacemakerControl` is the seam; :class:`CrmResourceControl` the real adapter (a
command prefix lets it run inside a namespace); :class:`FakePacemakerControl` the fake
used by the handler tests (kept here because test kits may not import services).
"""

from __future__ import annotations

from typing import Protocol, final
from xml.sax.saxutils import quoteattr

import structlog
from anyio.lowlevel import checkpoint

from pgcm_common.pacemaker import (
    ClusterState,
    Node,
    PacemakerError,
    PgsqlStatus,
    Role,
)
from pgcm_supervise.errors import ClusterWithoutQuorum, NoMigrationTarget, UnknownMigrationTarget
from pgcm_supervise.pacemaker_tool import ToolOptions, run_tool

__all__ = [
    "CrmResourceControl",
    "FakePacemakerControl",
    "PacemakerControl",
    "choose_target",
    "move_promoted_argv",
    "prefer_promoted_argv",
]

_log = structlog.get_logger("pgcm_supervise.pacemaker_control")


def move_promoted_argv(
    resource: str, node: str, executable: str = "crm_resource"
) -> tuple[str, ...]:
    """Return the ``crm_resource`` argv that prefers ``node`` for ``resource``'s promoted role."""
    return (executable, "--resource", resource, "--move", "--promoted", "--node", node)


def prefer_promoted_argv(resource: str, node: str, executable: str = "cibadmin") -> tuple[str, ...]:
    """Return the ``cibadmin`` argv writing the constraint of :func:`move_promoted_argv`.

    The element is the one ``crm_resource --move --promoted`` writes, so ``--clear`` and
    every reader of move constraints treat it alike. ``--allow-create`` makes it one
    request whether or not a preference exists: the CIB manager applies it atomically,
    and a schema that does not know the role refuses it whole.
    """
    element = (
        f"<rsc_location id={quoteattr('cli-prefer-' + resource)} rsc={quoteattr(resource)}"
        f' role="Promoted" node={quoteattr(node)} score="INFINITY"/>'
    )
    return (
        executable,
        "--modify",
        "--allow-create",
        "--scope",
        "constraints",
        "--xml-text",
        element,
    )


class PacemakerControl(Protocol):
    """What the failover API needs to change where Pacemaker runs the primary."""

    async def move_promoted(self, resource: str, node: str) -> None:
        """Prefer ``node`` for the promoted role of the clone ``resource``.

        Raises:
            PacemakerError: the tool failed; nothing was changed.
        """
        ...

    async def prefer_promoted(self, resource: str, node: str) -> None:
        """Write the constraint :meth:`move_promoted` writes, without its checks.

        Only for a ``node`` already checked to be an online standby that may be promoted
        and that carries no ban for ``resource``: nothing else is checked. Replaces an
        existing preference of ``resource``.

        Raises:
            PacemakerError: the tool failed; nothing was changed.
        """
        ...

    async def clear(self, resource: str) -> None:
        """Remove every move/ban constraint of ``resource`` (none left is success).

        Raises:
            PacemakerError: the tool failed.
        """
        ...


@final
class CrmResourceControl:
    """The real :class:`PacemakerControl`: runs ``crm_resource`` without a shell.

    Cancellation: the caller bounds each call; the tool's process group is killed and
    reaped when the call is cancelled (``pgcm_common.pacemaker.run_command``).
    """

    def __init__(
        self,
        options: ToolOptions | None = None,
        *,
        executable: str = "crm_resource",
        cibadmin: str = "cibadmin",
    ) -> None:
        self._options = options or ToolOptions()
        self._executable = executable
        self._cibadmin = cibadmin

    async def _run(self, *args: str) -> None:
        await run_tool(self._options, self._executable, *args)

    async def prefer_promoted(self, resource: str, node: str) -> None:
        """Write ``cli-prefer-<resource>`` for the Promoted role on ``node`` with cibadmin.

        See :func:`prefer_promoted_argv`.

        Raises:
            PacemakerCommandFailed: cibadmin could not run or exited non-zero.
        """
        await self._move(prefer_promoted_argv(resource, node, self._cibadmin), resource, node)

    async def move_promoted(self, resource: str, node: str) -> None:
        """Run ``crm_resource --resource <r> --move --promoted --node <node>``.

        Raises:
            PacemakerCommandFailed: crm_resource could not run or exited non-zero.
        """
        await self._move(move_promoted_argv(resource, node, self._executable), resource, node)

    async def _move(self, argv: tuple[str, ...], resource: str, node: str) -> None:
        await run_tool(self._options, *argv)
        tool = argv[0].rsplit("/", 1)[-1]
        _log.info(
            "pacemaker.resource.move", resource=resource, node=node, role="Promoted", tool=tool
        )

    async def clear(self, resource: str) -> None:
        """Run ``crm_resource --resource <r> --clear``.

        Raises:
            PacemakerCommandFailed: crm_resource could not run or exited non-zero.
        """
        await self._run("--resource", resource, "--clear")
        _log.info("pacemaker.resource.clear", resource=resource)


@final
class FakePacemakerControl:
    """In-memory :class:`PacemakerControl`: records ``calls``; ``fail_with`` makes it fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.preferred: dict[str, str] = {}
        self.error: PacemakerError | None = None
        self.prefer_error: PacemakerError | None = None  # prefer_promoted only

    def fail_with(self, error: PacemakerError | None) -> None:
        """Make every later call raise ``error`` (None: succeed again)."""
        self.error = error

    async def move_promoted(self, resource: str, node: str) -> None:
        """Record the move; raise the configured error instead when there is one."""
        await checkpoint()
        if self.error is not None:
            raise self.error
        self.calls.append(("move", resource, node))
        self.preferred[resource] = node

    async def prefer_promoted(self, resource: str, node: str) -> None:
        """Record the preference; raise the configured error instead when there is one."""
        await checkpoint()
        if self.prefer_error is not None:
            raise self.prefer_error
        if self.error is not None:
            raise self.error
        self.calls.append(("prefer", resource, node))
        self.preferred[resource] = node

    async def clear(self, resource: str) -> None:
        """Record the clear; raise the configured error instead when there is one."""
        await checkpoint()
        if self.error is not None:
            raise self.error
        self.calls.append(("clear", resource))
        self.preferred.pop(resource, None)


def _is_sync(state: ClusterState, node: str) -> bool:
    legacy = state.legacy_pgsql_of(node)
    return legacy is not None and legacy.status is PgsqlStatus.HS_SYNC


def _usable(node: Node | None) -> bool:
    return (
        node is not None
        and node.online
        and not (node.standby or node.unclean or node.maintenance or node.shutdown)
    )


def choose_target(state: ClusterState, requested: str = "") -> Node:
    """Return the node the primary should move to.

    With ``requested`` empty: the standby the cluster would promote — the highest
    promotion score among online, unpromoted instances (negative scores never win),
    ties broken by the legacy agent's sync state when known, then by name. With a name:
    that node, once checked to exist, be online, not be the primary and run a healthy
    unpromoted instance with a non-negative promotion score (the automatic bar).

    Raises:
        ClusterWithoutQuorum: this partition has no quorum.
        UnknownMigrationTarget: ``requested`` is not a cluster node.
        NoMigrationTarget: no candidate, or the named node cannot take the role.
    """
    if not state.with_quorum:
        raise ClusterWithoutQuorum
    promoted = {i.node for i in state.instances if i.role is Role.PROMOTED and i.node}
    if requested:
        return _check_requested(state, requested, promoted)
    candidates: list[tuple[int, bool, str]] = []
    for instance in state.instances:
        name = instance.node
        if instance.role is not Role.UNPROMOTED or name is None or name in promoted:
            continue
        score = state.promotion_score(name)
        if score is None or score < 0 or not _usable(state.node(name)) or instance.failed:
            continue
        candidates.append((score, _is_sync(state, name), name))
    if not candidates:
        raise NoMigrationTarget("no online standby with a non-negative promotion score")
    # Highest score, then sync before async, then the smallest name: deterministic.
    best = min(candidates, key=lambda c: (-c[0], not c[1], c[2]))
    chosen = state.node(best[2])
    if chosen is None:  # pragma: no cover - candidates are filtered on state.node()
        raise NoMigrationTarget(f"node {best[2]!r} vanished")
    return chosen


def _check_requested(state: ClusterState, requested: str, promoted: set[str]) -> Node:
    node = state.node(requested)
    if node is None:
        raise UnknownMigrationTarget(requested, tuple(sorted(n.name for n in state.nodes)))
    if not _usable(node):
        raise NoMigrationTarget(f"node {requested!r} is not online and active")
    if requested in promoted:
        raise NoMigrationTarget(f"node {requested!r} is already the primary")
    # The same bar as the automatic choice: a running, healthy standby that Pacemaker
    # would promote. Anything else makes Pacemaker ignore the move or promote a node
    # whose data it does not trust (PAF's negative score).
    standby = [
        i
        for i in state.instances
        if i.node == requested and i.role is Role.UNPROMOTED and i.active and not i.failed
    ]
    if not standby:
        raise NoMigrationTarget(f"node {requested!r} runs no healthy unpromoted instance")
    score = state.promotion_score(requested)
    if score is None or score < 0:
        raise NoMigrationTarget(
            f"node {requested!r} has no non-negative promotion score (got {score})"
        )
    return node
