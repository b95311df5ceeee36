from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from pgcm_common.pacemaker import CrmMonParseError, CrmMonReader, NoQuorum
from pgcm_testkit.fakes.pacemaker import FakeCrmMonReader, state_from_file

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pacemaker"


async def test_fake_reader_returns_the_state_it_was_given_until_changed() -> None:
    healthy = state_from_file(FIXTURES / "01-healthy-n1-primary.xml", resource_id="pgsqld")
    minority = state_from_file(
        FIXTURES / "05-after-partition-n2-minority-view.xml", resource_id="pgsqld"
    )
    fake = FakeCrmMonReader(healthy)
    reader: CrmMonReader = fake
    with anyio.fail_after(1):
        assert (await reader.read_cluster_state()).primary_node == "n1"
        fake.set_state(minority)
        assert isinstance((await reader.read_cluster_state()).primary, NoQuorum)
    assert fake.reads == 2


async def test_fake_reader_raises_the_configured_error() -> None:
    fake = FakeCrmMonReader(CrmMonParseError("boom"))
    with anyio.fail_after(1), pytest.raises(CrmMonParseError, match="boom"):
        await fake.read_cluster_state()
