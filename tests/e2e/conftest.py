"""One lab running pgcm for the whole end-to-end session (the ``lab`` fixture: tests/)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def lab_state_dir() -> Path:
    """Where the end-to-end lab lives."""
    return Path("/var/tmp/pgcm-lab-e2e")


@pytest.fixture(scope="session")
def lab_binaries() -> tuple[str, ...]:
    """What the end-to-end tests run besides the lab itself."""
    return ("pgbench",)
