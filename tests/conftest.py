"""The lab fixture shared by the end-to-end and fault suites (each picks its own lab).

A suite's conftest defines ``lab_state_dir`` (where its lab lives: postgres must be able
to traverse it, so never a 0700 temporary directory) and ``lab_binaries`` (the programs
its tests run, checked before anything starts).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from pgcm_lab.lab import Lab, Progress, lab_leftovers
from pgcm_lab.testing import running_lab_with_pgcm
from pgcm_testkit.process import require_binary

_LAB_BINARIES = ("corosync", "pacemakerd", "crm_resource", "etcd", "pgbouncer")


@pytest.fixture(scope="session")
def lab(
    tmp_path_factory: pytest.TempPathFactory, lab_state_dir: Path, lab_binaries: Sequence[str]
) -> Iterator[Lab]:
    """The lab with pgcm-supervise and pgcm-proxy running; down in a finalizer."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    for binary in (*_LAB_BINARIES, *lab_binaries):
        require_binary(binary)
    probe = Lab(lab_state_dir, progress=Progress(None))
    if lab_leftovers(probe):
        pytest.fail(f"a lab is already running ({lab_leftovers(probe)}): run `pgcm-lab down`")
    with running_lab_with_pgcm(
        lab_state_dir, logs_dir=lambda: tmp_path_factory.mktemp("lab-logs")
    ) as running:
        yield running
