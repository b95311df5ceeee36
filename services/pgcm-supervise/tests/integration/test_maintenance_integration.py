"""``CrmAttributeMaintenance`` against a real one-node Pacemaker cluster.

The cluster is shared by the whole session: the test always turns maintenance off again.
"""

from __future__ import annotations

import anyio
import pytest

from pgcm_common.pacemaker import run_command
from pgcm_supervise.maintenance import CrmAttributeMaintenance
from pgcm_supervise.pacemaker_tool import ToolOptions
from pgcm_testkit.pacemaker import PacemakerNode

pytestmark = pytest.mark.integration

CLEANUP_GRACE_S = 20


async def maintenance_mode(node: PacemakerNode) -> str:
    argv = (*node.command_prefix, "crm_attribute", "--type", "crm_config")
    argv += ("--name", "maintenance-mode", "--query", "--quiet")
    output = await run_command(argv)
    return output.stdout.decode().strip() if output.returncode == 0 else "(unset)"


async def test_maintenance_mode_is_set_and_cleared_in_the_cib(
    pacemaker_node: PacemakerNode,
) -> None:
    control = CrmAttributeMaintenance(ToolOptions(command_prefix=pacemaker_node.command_prefix))
    try:
        with anyio.fail_after(30):
            await control.set_maintenance(enabled=True)
            assert await maintenance_mode(pacemaker_node) == "true"
            await control.set_maintenance(enabled=True)  # already on is success
            assert await maintenance_mode(pacemaker_node) == "true"
            await control.set_maintenance(enabled=False)
            assert await maintenance_mode(pacemaker_node) == "false"
    finally:
        with anyio.move_on_after(CLEANUP_GRACE_S, shield=True):
            await control.set_maintenance(enabled=False)
