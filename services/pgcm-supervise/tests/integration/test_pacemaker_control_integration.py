"""``CrmResourceControl`` and ``choose_target`` against a real one-node Pacemaker cluster.

One node cannot hand the primary to another node, so what is tested is what one node
truthfully allows: ``crm_resource --move --promoted`` refuses the node that already holds
the promoted role and an unknown node (creating nothing); once promotion is banned on the
node, the instance is demoted, ``choose_target`` picks that node from the real crm_mon
state, and the move replaces the ban with a ``cli-prefer`` constraint for the Promoted role
(so the node is promoted again); ``--clear`` removes it. ``prefer_promoted`` (cibadmin)
writes exactly the constraint ``--move`` writes, replacing one that exists. The fixture
always clears the
clone's constraints and waits for the promotion to come back: the cluster is shared by the
whole session.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import final

import anyio
import pytest
from defusedxml.ElementTree import fromstring

from pgcm_common.pacemaker import (
    ClusterState,
    CrmMon,
    CrmMonOptions,
    PacemakerCommandFailed,
    Role,
    run_command,
)
from pgcm_supervise.errors import NoMigrationTarget, UnknownMigrationTarget
from pgcm_supervise.pacemaker_control import (
    CrmResourceControl,
    choose_target,
)
from pgcm_supervise.pacemaker_tool import ToolOptions
from pgcm_testkit.eventually import eventually
from pgcm_testkit.pacemaker import PacemakerNode

pytestmark = pytest.mark.integration

# crm_resource's exit codes (Pacemaker's crm_exit_t), as seen on 2.1.5.
CRM_EX_NOSUCH = 105
CRM_EX_EXISTS = 108
CLEANUP_GRACE_S = 20


@final
@dataclass(frozen=True, slots=True)
class Location:
    """One ``rsc_location`` constraint of the CIB."""

    id: str
    rsc: str
    role: str | None
    node: str | None
    score: str | None


@final
@dataclass(frozen=True, slots=True)
class Cluster:
    """The shared node with the clone promoted on it and no constraints."""

    node: PacemakerNode
    crm: CrmMon
    control: CrmResourceControl


async def locations(node: PacemakerNode) -> list[Location]:
    """Return every location constraint, read with ``cibadmin`` inside the node."""
    output = await run_command(
        (*node.command_prefix, "cibadmin", "--query", "--scope", "constraints")
    )
    assert output.returncode == 0, output.stderr_text
    return [
        Location(
            id=element.get("id", ""),
            rsc=element.get("rsc", ""),
            role=element.get("role"),
            node=element.get("node"),
            score=element.get("score"),
        )
        for element in fromstring(output.stdout).iter("rsc_location")
    ]


async def wait_for_role(crm: CrmMon, node: str, role: Role) -> ClusterState:
    """Poll crm_mon until ``node``'s instance has ``role``; return that state."""
    seen: list[ClusterState] = []

    async def has_role() -> bool:
        state = await crm.read_cluster_state()
        seen[:] = [state]
        return any(i.node == node and i.role is role for i in state.instances)

    await eventually(has_role, interval_s=0.2)
    return seen[0]


async def clear_everything(node: PacemakerNode, control: CrmResourceControl) -> None:
    """Clear the clone's move/ban constraints, shielded, with a deadline of its own (C5)."""
    with anyio.move_on_after(CLEANUP_GRACE_S, shield=True):
        await control.clear(node.clone_id)


@pytest.fixture
async def cluster(pacemaker_node: PacemakerNode) -> AsyncIterator[Cluster]:
    crm = CrmMon(
        CrmMonOptions(
            resource_id=pacemaker_node.resource_id,
            command_prefix=pacemaker_node.command_prefix,
            timeout=timedelta(seconds=10),
        )
    )
    control = CrmResourceControl(ToolOptions(command_prefix=pacemaker_node.command_prefix))
    with anyio.fail_after(60):
        await wait_for_role(crm, pacemaker_node.name, Role.PROMOTED)
    # A test that starts with somebody else's constraint would assert nonsense.
    assert await locations(pacemaker_node) == []
    try:
        yield Cluster(pacemaker_node, crm, control)
    finally:
        await clear_everything(pacemaker_node, control)
        with anyio.fail_after(60):
            await wait_for_role(crm, pacemaker_node.name, Role.PROMOTED)


async def test_choose_target_on_a_promoted_single_node_finds_no_standby(cluster: Cluster) -> None:
    with anyio.fail_after(15):
        state = await cluster.crm.read_cluster_state()
    assert state.primary_node == cluster.node.name
    assert state.clone_id == cluster.node.clone_id
    with pytest.raises(NoMigrationTarget, match="no online standby"):
        choose_target(state)
    with pytest.raises(NoMigrationTarget, match="already the primary"):
        choose_target(state, cluster.node.name)
    with pytest.raises(UnknownMigrationTarget) as unknown:
        choose_target(state, "pcmk9")
    assert (unknown.value.node, unknown.value.known) == ("pcmk9", (cluster.node.name,))


async def test_move_promoted_onto_the_current_primary_is_refused_and_adds_nothing(
    cluster: Cluster,
) -> None:
    with anyio.fail_after(15):
        with pytest.raises(PacemakerCommandFailed) as caught:
            await cluster.control.move_promoted(cluster.node.clone_id, cluster.node.name)
        assert await locations(cluster.node) == []
    assert caught.value.returncode == CRM_EX_EXISTS
    assert "already exists" in caught.value.stderr


async def test_move_promoted_to_an_unknown_node_is_refused_and_adds_nothing(
    cluster: Cluster,
) -> None:
    with anyio.fail_after(15):
        with pytest.raises(PacemakerCommandFailed) as caught:
            await cluster.control.move_promoted(cluster.node.clone_id, "pcmk9")
        assert await locations(cluster.node) == []
    assert caught.value.returncode == CRM_EX_NOSUCH
    assert "Node 'pcmk9' not found" in caught.value.stderr


async def test_clear_of_an_unknown_resource_is_refused(cluster: Cluster) -> None:
    with anyio.fail_after(15), pytest.raises(PacemakerCommandFailed) as caught:
        await cluster.control.clear("no-such-clone")
    assert caught.value.returncode == CRM_EX_NOSUCH


async def test_move_promoted_replaces_a_ban_with_a_promoted_preference_and_clear_removes_it(
    cluster: Cluster,
) -> None:
    node, clone = cluster.node, cluster.node.clone_id
    # Banning promotion demotes the only instance: now the node is a standby that
    # choose_target may pick, as it would pick a real sync standby.
    await anyio.to_thread.run_sync(
        node.exec_in_node,
        ["crm_resource", "--resource", clone, "--ban", "--promoted", "--node", node.name],
    )
    with anyio.fail_after(60):
        demoted = await wait_for_role(cluster.crm, node.name, Role.UNPROMOTED)
    assert demoted.primary_node is None
    assert [(b.node, b.promoted_only) for b in demoted.bans] == [(node.name, True)]
    score = demoted.promotion_score(node.name)
    assert score is not None
    assert score >= 0

    target = choose_target(demoted)
    assert target.name == node.name

    with anyio.fail_after(60):
        await cluster.control.move_promoted(clone, target.name)
        moved = await locations(node)
        promoted_again = await wait_for_role(cluster.crm, node.name, Role.PROMOTED)
    # The move drops the ban on its target and adds a preference for the Promoted role.
    assert moved == [
        Location(
            id=f"cli-prefer-{clone}", rsc=clone, role="Promoted", node=node.name, score="INFINITY"
        )
    ]
    assert promoted_again.primary_node == node.name
    assert promoted_again.bans == ()

    with anyio.fail_after(30):
        await cluster.control.clear(clone)
        cleared = await locations(node)
        await cluster.control.clear(clone)  # nothing left to clear is success
        still_promoted = await cluster.crm.read_cluster_state()
    assert cleared == []
    assert still_promoted.primary_node == node.name


async def test_prefer_promoted_writes_the_constraint_move_writes_and_replaces_it(
    cluster: Cluster,
) -> None:
    node, clone = cluster.node, cluster.node.clone_id
    expected = Location(
        id=f"cli-prefer-{clone}", rsc=clone, role="Promoted", node=node.name, score="INFINITY"
    )
    with anyio.fail_after(30):
        await cluster.control.prefer_promoted(clone, "elsewhere")
        first = await locations(node)
        # The same call again replaces the preference: one constraint, the new node.
        await cluster.control.prefer_promoted(clone, node.name)
        replaced = await locations(node)
        await cluster.control.clear(clone)
        cleared = await locations(node)
        state = await cluster.crm.read_cluster_state()
    assert first == [dataclasses.replace(expected, node="elsewhere")]
    assert replaced == [expected]
    assert cleared == []
    assert state.primary_node == node.name


async def test_prefer_promoted_of_a_resource_with_a_quote_in_its_name_is_escaped(
    cluster: Cluster,
) -> None:
    with anyio.fail_after(15), pytest.raises(PacemakerCommandFailed):
        # Pacemaker refuses such an id; what matters is that the quote did not end the
        # attribute and write a constraint for another resource.
        await cluster.control.prefer_promoted(f'{cluster.node.clone_id}" rsc="x', "n")
    assert await locations(cluster.node) == []
