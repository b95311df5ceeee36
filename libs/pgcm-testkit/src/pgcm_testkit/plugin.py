"""pytest plugin entry point (``pytest11``): registers every fixture module of the test kit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

pytest_plugins = [
    "pgcm_testkit.etcd",
    "pgcm_testkit.postgres",
    "pgcm_testkit.pgbouncer",
    "pgcm_testkit.pacemaker",
]


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test whose event loop makes a blocking call (STYLE C10)."""
    with blockbuster_ctx() as bb:
        yield bb
