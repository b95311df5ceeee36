"""pytest plugin entry point (``pytest11``): registers every fixture module of the test kit."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
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


@pytest.fixture(autouse=True, scope="session")
def structlog_without_logger_cache() -> Iterator[None]:
    """Keep ``capture_logs`` working after a test ran a CLI that configured logging.

    ``configure_logging`` turns on ``cache_logger_on_first_use`` (right for a daemon);
    in one test process a cached logger would bypass later ``capture_logs`` calls.
    """
    original = structlog.configure

    def configure(*args: Any, **kwargs: Any) -> None:  # noqa: ANN401 - forwards structlog's own
        kwargs["cache_logger_on_first_use"] = False
        original(*args, **kwargs)

    structlog.configure = configure
    try:
        yield
    finally:
        structlog.configure = original


@pytest.fixture(autouse=True)
def structlog_reset_after_test() -> Iterator[None]:
    """Undo any logging configuration a test made (CLI tests call configure_logging)."""
    yield
    structlog.reset_defaults()
