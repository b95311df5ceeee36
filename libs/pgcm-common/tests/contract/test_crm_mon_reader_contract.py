"""One suite, two readers: the fake crm_mon reader and crm_mon on a real Pacemaker node."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from pgcm_common.pacemaker import (
    CrmMon,
    CrmMonOptions,
    CrmMonParseError,
    CrmMonReader,
    PacemakerError,
    SinglePrimary,
)
from pgcm_testkit.fakes.pacemaker import FakeCrmMonReader, state_from_file
from pgcm_testkit.pacemaker import PacemakerNode

SAMPLES = Path(__file__).parents[1] / "fixtures" / "pacemaker"


@dataclass(frozen=True, slots=True)
class Harness:
    reader: CrmMonReader
    broken: CrmMonReader
    promoted_node: str


@pytest.fixture(params=["fake", "real"])
def harness(request: pytest.FixtureRequest) -> Harness:
    if request.param == "fake":
        state = state_from_file(SAMPLES / "01-healthy-n1-primary.xml", resource_id="pgsqld")
        broken = FakeCrmMonReader(state)
        broken.fail_with(CrmMonParseError("not XML"))
        return Harness(FakeCrmMonReader(state), broken, "n1")
    node: PacemakerNode = request.getfixturevalue("pacemaker_node")
    options = CrmMonOptions(resource_id=node.resource_id, command_prefix=node.command_prefix)
    failing = CrmMon(CrmMonOptions(resource_id=node.resource_id, executable="/bin/false"))
    return Harness(CrmMon(options), failing, node.name)


async def test_reading_a_promoted_cluster_names_its_one_primary(harness: Harness) -> None:
    with anyio.fail_after(60):
        while True:
            state = await harness.reader.read_cluster_state()
            if isinstance(state.primary, SinglePrimary):
                break
            await anyio.sleep(0.2)  # the real cluster may still be promoting its clone
    assert state.primary_node == harness.promoted_node
    assert state.with_quorum


async def test_a_failed_read_raises_a_pacemaker_error_and_nothing_else(harness: Harness) -> None:
    with anyio.fail_after(10), pytest.raises(PacemakerError):
        await harness.broken.read_cluster_state()
