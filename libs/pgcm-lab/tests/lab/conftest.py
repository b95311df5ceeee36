from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from pgcm_lab.lab import Lab, Progress, lab_leftovers
from pgcm_testkit.process import require_binary

STATE_DIR = Path("/var/tmp/pgcm-lab-test")  # postgres must traverse it: not a 0700 tmp dir


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """One lab for the whole session, always torn down (also after a failing test)."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    for binary in ("corosync", "pacemakerd", "crm_resource", "etcd", "pgbouncer", "pg_rewind"):
        require_binary(binary)
    probe = Lab(STATE_DIR, progress=Progress(None))
    if lab_leftovers(probe):
        pytest.fail(f"a lab is already running ({lab_leftovers(probe)}): run `pgcm-lab down`")
    the_lab = Lab(STATE_DIR, progress=Progress(sys.stderr))
    try:
        anyio.run(the_lab.up)
        yield the_lab
    finally:
        anyio.run(the_lab.down)
