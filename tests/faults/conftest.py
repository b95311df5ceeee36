"""One lab running pgcm for the whole fault suite, always torn down."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from pgcm_lab.lab import Lab, Progress, lab_leftovers
from pgcm_lab.pgcm import start_pgcm
from pgcm_testkit.process import require_binary

STATE_DIR = Path("/var/tmp/pgcm-lab-faults")  # postgres must traverse it


async def _up(lab: Lab) -> None:
    await lab.up()
    await start_pgcm(lab)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The lab with pgcm-supervise and pgcm-proxy running; down in a finalizer."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    for binary in ("corosync", "pacemakerd", "crm_resource", "etcd", "pgbouncer", "psql"):
        require_binary(binary)
    probe = Lab(STATE_DIR, progress=Progress(None))
    if lab_leftovers(probe):
        pytest.fail(f"a lab is already running ({lab_leftovers(probe)}): run `pgcm-lab down`")
    the_lab = Lab(STATE_DIR, progress=Progress(sys.stderr))
    try:
        anyio.run(_up, the_lab)
        yield the_lab
    finally:
        try:
            nodes = the_lab.state_dir / "nodes"
            if nodes.is_dir():
                target = tmp_path_factory.mktemp("lab-logs")
                shutil.copytree(
                    nodes,
                    target / "nodes",
                    ignore=shutil.ignore_patterns("var-lib-*", "run", "etc-*", "hosts"),
                    dirs_exist_ok=True,
                )
                sys.stderr.write(f"\nlab logs kept in {target}\n")
        finally:
            anyio.run(the_lab.down)
