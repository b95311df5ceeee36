from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from pgcm_common.pacemaker import (
    CorosyncNodeAddresses,
    CrmMon,
    CrmMonDialect,
    CrmMonOptions,
    Node,
    NodeAddressUnknown,
    OutputFormat,
    PacemakerCommandFailed,
    Role,
    SinglePrimary,
    read_cluster_state,
)
from pgcm_testkit.eventually import eventually
from pgcm_testkit.pacemaker import PacemakerNode

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pacemaker"


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path


async def process_gone(pid: int) -> bool:
    try:
        status = await anyio.Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    # Killed but not yet reaped by its (new) parent: it no longer runs.
    return "\nState:\tZ" in status


async def test_crm_mon_from_real_pacemaker_is_parsed_into_the_promoted_node(
    pacemaker_node: PacemakerNode,
) -> None:
    reader = CrmMon(
        CrmMonOptions(
            resource_id=pacemaker_node.resource_id, command_prefix=pacemaker_node.command_prefix
        )
    )

    async def promoted() -> bool:
        return (await reader.read_cluster_state()).primary_node == pacemaker_node.name

    with anyio.fail_after(60):
        await eventually(promoted, interval_s=0.5)
        state = await reader.read_cluster_state()
    primary = state.primary
    assert isinstance(primary, SinglePrimary)
    assert primary.instance.role is Role.PROMOTED
    assert state.output_format is OutputFormat.OUTPUT_AS_XML
    assert state.clone_id == pacemaker_node.clone_id
    assert state.dc == pacemaker_node.name
    assert state.with_quorum
    [node] = state.nodes
    assert (node.name, node.id, node.online, node.is_dc) == (pacemaker_node.name, "1", True, True)
    # Stateful sets its promotion score to 10 when promoted.
    assert state.promotion_score(pacemaker_node.name) == 10


async def test_legacy_as_xml_from_real_pacemaker_gives_the_same_primary(
    pacemaker_node: PacemakerNode,
) -> None:
    options = CrmMonOptions(
        resource_id=pacemaker_node.clone_id,
        command_prefix=pacemaker_node.command_prefix,
        dialect=CrmMonDialect.LEGACY_AS_XML,
    )

    async def promoted() -> bool:
        return (await read_cluster_state(options)).primary_node == pacemaker_node.name

    with anyio.fail_after(60):
        await eventually(promoted, interval_s=0.5)
        state = await read_cluster_state(options)
    assert state.output_format is OutputFormat.LEGACY_AS_XML
    assert state.resource_id == pacemaker_node.resource_id


async def test_corosync_reports_the_node_ring_address(pacemaker_node: PacemakerNode) -> None:
    resolver = CorosyncNodeAddresses(command_prefix=pacemaker_node.command_prefix)
    with anyio.fail_after(30):
        state = await read_cluster_state(
            CrmMonOptions(
                resource_id=pacemaker_node.resource_id,
                command_prefix=pacemaker_node.command_prefix,
            )
        )
        [node] = state.nodes
        assert await resolver.address_of(node) == "127.0.0.1"


async def test_timeout_kills_a_hanging_crm_mon_and_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    hang = write_script(
        tmp_path / "hang",
        f"echo $$ > {pids}\nsleep 300 &\necho $! >> {pids}\nwait\n",
    )
    options = CrmMonOptions(command_prefix=(str(hang),), timeout=timedelta(seconds=0.5))
    with anyio.fail_after(10), pytest.raises(TimeoutError, match=r"did not finish within 0.5s"):
        await read_cluster_state(options)
    leader, grandchild = (int(word) for word in (await anyio.Path(pids).read_text()).split())
    with anyio.fail_after(5):
        await eventually(lambda: process_gone(leader))
        await eventually(lambda: process_gone(grandchild))


async def test_caller_owned_deadline_also_kills_the_child(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    hang = write_script(tmp_path / "hang", f"echo $$ > {pids}\nexec sleep 300\n")
    with pytest.raises(TimeoutError), anyio.fail_after(0.5):
        await read_cluster_state(CrmMonOptions(command_prefix=(str(hang),)))
    [leader] = (int(word) for word in (await anyio.Path(pids).read_text()).split())
    with anyio.fail_after(5):
        await eventually(lambda: process_gone(leader))


async def test_non_zero_exit_is_a_pacemaker_error_carrying_stderr_and_status(
    tmp_path: Path,
) -> None:
    failing = write_script(
        tmp_path / "failing",
        f"cat {FIXTURES / 'malformed' / 'crm-mon-not-connected.xml'}\n"
        "echo 'crm_mon: Connection to cluster failed' >&2\nexit 102\n",
    )
    with (
        anyio.fail_after(10),
        pytest.raises(PacemakerCommandFailed, match=r"exited 102.*Not connected.*stderr: crm_mon"),
    ):
        await read_cluster_state(CrmMonOptions(command_prefix=(str(failing),)))


async def test_missing_executable_is_a_pacemaker_error() -> None:
    options = CrmMonOptions(executable="/nonexistent/crm_mon")
    with anyio.fail_after(10), pytest.raises(PacemakerCommandFailed, match="could not be started"):
        await read_cluster_state(options)


async def test_auto_dialect_falls_back_to_as_xml_on_pacemaker_1_1(tmp_path: Path) -> None:
    old_crm_mon = write_script(
        tmp_path / "crm_mon",
        'for arg in "$@"; do\n'
        '  if [ "$arg" = --output-as=xml ]; then\n'
        "    echo \"crm_mon: unrecognized option '--output-as=xml'\" >&2; exit 64\n"
        "  fi\n"
        "done\n"
        f"cat {FIXTURES / '30-synthetic-pacemaker-1.1-master-slave.xml'}\n",
    )
    options = CrmMonOptions(executable=str(old_crm_mon))
    with anyio.fail_after(10):
        state = await read_cluster_state(options)
    assert state.output_format is OutputFormat.LEGACY_AS_XML
    assert state.pacemaker_version == "1.1.24"
    assert state.primary_node == "n1"


async def test_a_hanging_corosync_cfgtool_is_killed_and_reported(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    hang = write_script(tmp_path / "hang", f"echo $$ > {pids}\nexec sleep 300\n")
    resolver = CorosyncNodeAddresses(command_prefix=(str(hang),), timeout=timedelta(seconds=0.5))
    node = Node("n1", "1", online=True, standby=False, unclean=False, maintenance=False, is_dc=True)
    with anyio.fail_after(10), pytest.raises(NodeAddressUnknown, match=r"did not answer in 0\.5s"):
        await resolver.address_of(node)
    leader = int((await anyio.Path(pids).read_text()).split()[0])
    with anyio.fail_after(5):
        await eventually(lambda: process_gone(leader))
