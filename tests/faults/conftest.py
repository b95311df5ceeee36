"""One lab running pgcm for the whole fault suite (the ``lab`` fixture: tests/)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def lab_state_dir() -> Path:
    """Where the fault suite's lab lives."""
    return Path("/var/tmp/pgcm-lab-faults")


@pytest.fixture(scope="session")
def lab_binaries() -> tuple[str, ...]:
    """What the fault tests run besides the lab itself."""
    return ("psql",)
