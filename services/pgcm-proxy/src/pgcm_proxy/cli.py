"""Command line of pgcm-proxy: ``run`` (default) and ``show-config``.

Exit codes: 0 clean stop, 1 fatal error, 2 bad configuration (the message names the key).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pgcm_common.daemon import Daemon
from pgcm_proxy.settings import ProxySettings

__all__ = ["DAEMON", "main"]

DESCRIPTION = """\
Keep the local PgBouncer pointed at the PostgreSQL primary: follow the
primary's address in etcd, render the PgBouncer config from its template,
RELOAD PgBouncer and acknowledge in etcd.

Readiness (systemd Type=notify) is signalled after the first confirmed apply.
"""


DAEMON = Daemon(
    prog="pgcm-proxy",
    role="proxy",
    description=DESCRIPTION,
    settings_cls=ProxySettings,
    serve="pgcm_proxy.app:serve",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    return DAEMON.main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
