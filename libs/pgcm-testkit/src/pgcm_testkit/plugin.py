"""pytest plugin entry point (``pytest11``): registers every fixture module of the test kit."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

pytest_plugins = [
    "pgcm_testkit.etcd",
    "pgcm_testkit.postgres",
    "pgcm_testkit.pgbouncer",
    "pgcm_testkit.pacemaker",
]

# Only our own code is held to "never block the event loop" (STYLE C10). Test bodies may
# prepare files synchronously; third-party code is not ours to police.
_SCANNED_PACKAGES = ("pgcm_common", "pgcm_supervise", "pgcm_proxy", "pgcm_failover")


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test in which pgcm code makes a blocking call on the event loop."""
    scanned = [name for name in _SCANNED_PACKAGES if importlib.util.find_spec(name) is not None]
    with blockbuster_ctx(scanned) as bb:
        yield bb
