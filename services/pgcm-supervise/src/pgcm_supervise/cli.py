"""Command line of pgcm-supervise: ``run`` (default) and ``show-config``.

Exit codes: 0 clean stop, 1 fatal error, 2 bad configuration (the message names the key).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence

from pgcm_common.daemon import Daemon
from pgcm_supervise.settings import SuperviseSettings

__all__ = ["DAEMON", "main"]

DESCRIPTION = """\
Supervise a PostgreSQL node: publish Pacemaker's primary to etcd and serve the
failover gRPC API (health_check, pause, resume, migrate, unmigrate).

Commands: run (the default) serves until SIGTERM/SIGINT; show-config prints the
effective configuration as TOML (secrets redacted); convert-config prints
the pgcm file equivalent to the original's config.toml.

Settings come from (lowest to highest precedence) the defaults, the TOML file given
with --config-file (tables [supervise] and [cluster]; other services' tables are ignored),
PGCM_* environment variables, and the flags below. Durations take Go-style values such
as 500ms, 5s, 1m30s. Exit codes: 0 clean stop, 1 fatal error, 2 bad configuration.

The original's flat config.toml (etcd-endpoints = ..., bind-address = ...) and its
PGCM_* names (PGCM_ETCD_ENDPOINTS) are read too; convert-config ORIGINAL.toml prints
the equivalent pgcm file.
"""


def _load_serve() -> Callable[..., Awaitable[None]]:
    # Imported on demand so that --help and show-config do not pay for grpclib and the etcd client.
    from pgcm_supervise.app import serve  # noqa: PLC0415

    return serve


DAEMON = Daemon(
    prog="pgcm-supervise",
    role="supervise",
    description=DESCRIPTION,
    settings_cls=SuperviseSettings,
    load_serve=_load_serve,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    return DAEMON.main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
