"""A lab whose PostgreSQL runs under the legacy ``ocf:heartbeat:pgsql`` agent, with pgcm."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgcm_lab.lab import Lab, Progress, lab_leftovers
from pgcm_lab.testing import running_lab_with_pgcm
from pgcm_lab.topology import Topology
from pgcm_testkit.process import require_binary

_STATE_DIR = Path("/var/tmp/pgcm-lab-legacy-e2e")
_BINARIES = ("corosync", "pacemakerd", "crm_resource", "etcd", "pgbouncer", "pgbench")


@pytest.fixture(scope="session")
def legacy_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The lab (clone ``msPostgresql`` of ``ocf:heartbeat:pgsql``) running pgcm."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    for binary in _BINARIES:
        require_binary(binary)
    if not Path("/usr/lib/ocf/resource.d/heartbeat/pgsql").exists():
        pytest.skip("resource-agents' ocf:heartbeat:pgsql is not installed")
    probe = Lab(_STATE_DIR, progress=Progress(None))
    if lab_leftovers(probe):
        pytest.fail(f"a lab is already running ({lab_leftovers(probe)}): run `pgcm-lab down`")
    with running_lab_with_pgcm(
        _STATE_DIR,
        logs_dir=lambda: tmp_path_factory.mktemp("legacy-lab-logs"),
        topology=Topology(agent="pgsql"),
    ) as running:
        yield running
