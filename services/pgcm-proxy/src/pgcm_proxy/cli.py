"""Command line of pgcm-proxy: ``run`` (default) and ``show-config``.

Exit codes: 0 clean stop, 1 fatal error, 2 bad configuration (the message names the key).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence

from pgcm_common.daemon import Daemon
from pgcm_proxy.settings import ProxySettings

__all__ = ["DAEMON", "main"]

DESCRIPTION = """\
Keep the local PgBouncer pointed at the PostgreSQL primary: follow the
primary's address in etcd, render the PgBouncer config from its template,
RELOAD PgBouncer and acknowledge in etcd.

Readiness (systemd Type=notify) is signalled after the first confirmed apply.

Settings come from (lowest to highest precedence) the defaults, the TOML file given
with --config-file (tables [proxy] and [cluster]; other services' tables are ignored),
PGCM_* environment variables, and the flags below. Durations take Go-style values such
as 500ms, 5s, 1m30s. Exit codes: 0 clean stop, 1 fatal error, 2 bad configuration.

The original's flat config.toml (etcd-endpoints = ..., bind-address = ...) and its
PGCM_* names (PGCM_ETCD_ENDPOINTS) are read too; convert-config ORIGINAL.toml prints
the equivalent pgcm file.
"""


def _load_serve() -> Callable[..., Awaitable[None]]:
    # Imported on demand so that --help and show-config do not pay for the etcd client.
    from pgcm_proxy.app import serve  # noqa: PLC0415

    return serve


DAEMON = Daemon(
    prog="pgcm-proxy",
    role="proxy",
    description=DESCRIPTION,
    settings_cls=ProxySettings,
    load_serve=_load_serve,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    return DAEMON.main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
