"""Command line of pgcm-supervise: ``run`` (default) and ``show-config``.

Exit codes: 0 clean stop, 1 fatal error, 2 bad configuration (the message names the key).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pgcm_common.daemon import Daemon
from pgcm_supervise.settings import SuperviseSettings

__all__ = ["DAEMON", "main"]

DESCRIPTION = """\
Supervise a PostgreSQL node: publish Pacemaker's primary to etcd and serve the
failover gRPC API (health_check, pause, resume, migrate, unmigrate).
"""


DAEMON = Daemon(
    prog="pgcm-supervise",
    role="supervise",
    description=DESCRIPTION,
    settings_cls=SuperviseSettings,
    serve="pgcm_supervise.app:serve",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    return DAEMON.main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
