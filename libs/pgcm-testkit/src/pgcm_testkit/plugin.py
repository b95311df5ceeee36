"""pytest plugin entry point (``pytest11``): registers every fixture module of the test kit."""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
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

_OWN_BASETEMP = pytest.StashKey[Path]()

# Only our own code is held to "never block the event loop". Test bodies may
# prepare files synchronously; third-party code is not ours to police.
_SCANNED_PACKAGES = ("pgcm_common", "pgcm_supervise", "pgcm_proxy", "pgcm_failover")


def pytest_configure(config: pytest.Config) -> None:
    """Give every pytest process its own base temp dir, outside /tmp/pytest-of-<user>.

    Servers run as ``postgres`` need their directories traversable, so the fixtures open
    up the base dir's mode; a concurrent pytest session would close /tmp/pytest-of-root
    again (pytest resets it to 0700 at start) and break running servers mid-test.
    """
    if config.option.basetemp is None:
        base = Path(tempfile.gettempdir()) / f"pgcm-pytest-{os.getpid()}-{secrets.token_hex(3)}"
        config.option.basetemp = str(base)
        config.stash[_OWN_BASETEMP] = base


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove our base temp dir (server data and logs) at the end of the session.

    Failing fixtures print their server's log tail, so nothing is lost by default; set
    ``PGCM_KEEP_TEST_DIRS=1`` to keep the directory of a failed run for a closer look.
    """
    base = session.config.stash.get(_OWN_BASETEMP, None)
    keep = exitstatus != 0 and os.environ.get("PGCM_KEEP_TEST_DIRS") == "1"
    if base is not None and not keep:
        shutil.rmtree(base, ignore_errors=True)
        if exitstatus != 0:
            session.config.get_terminal_writer().line(
                f"pgcm: removed {base} (PGCM_KEEP_TEST_DIRS=1 keeps it after a failure)"
            )


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
