"""One lab running pgcm for the whole fault suite, always torn down."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgcm_lab.lab import Lab, Progress, lab_leftovers
from pgcm_lab.testing import running_lab_with_pgcm
from pgcm_testkit.process import require_binary

STATE_DIR = Path("/var/tmp/pgcm-lab-faults")  # postgres must traverse it


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
    with running_lab_with_pgcm(
        STATE_DIR, logs_dir=lambda: tmp_path_factory.mktemp("lab-logs")
    ) as lab:
        yield lab
