"""Command line of pgcm-proxy: parse settings, configure logging, run.

Exit codes: 0 clean stop, 1 fatal error, 2 bad configuration (the message names the key).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence

import structlog

from pgcm_common.errors import ConfigError
from pgcm_common.lifecycle import run_until_signalled
from pgcm_common.logging import bind_role, configure_logging
from pgcm_common.settings import common_arguments, render_toml, settings_from_args
from pgcm_proxy.app import serve, watchdog_interval
from pgcm_proxy.settings import ProxySettings

__all__ = ["main"]

PROG = "pgcm-proxy"
DESCRIPTION = """\
Keep the local PgBouncer pointed at the PostgreSQL primary: follow the
primary's address in etcd, render the PgBouncer config from its template,
RELOAD PgBouncer and acknowledge in etcd.

Readiness (systemd Type=notify) is signalled after the first confirmed apply.

Settings come from (lowest to highest precedence) the defaults, the TOML file given
with --config-file (tables [proxy] and [cluster]; other services' tables are ignored),
PGCM_* environment variables, and the flags below. Durations take Go-style values such
as 500ms, 5s, 1m30s. Exit codes: 0 clean stop, 1 fatal error, 2 bad configuration.
"""

log = structlog.get_logger("pgcm.proxy.cli")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser (exposed for tests and docs)."""
    common = common_arguments(ProxySettings)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="run the service (the default)")
    sub.add_parser(
        "show-config", parents=[common], help="print the effective configuration as TOML"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    log_format = getattr(args, "log_format", "auto")
    configure_logging(
        json=None if log_format == "auto" else log_format == "json",
        level=getattr(args, "log_level", "info"),
    )
    bind_role("proxy")
    try:
        settings, loaded = settings_from_args(ProxySettings, args)
    except ConfigError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 2
    if loaded is not None:
        log.info("config_file.loaded", path=str(loaded.path), hash=loaded.sha256)
    command = args.command or "run"
    if command == "show-config":
        sys.stdout.write(render_toml(settings, header=f"Effective configuration of {PROG}."))
        return 0
    return _run(settings)


def _run(settings: ProxySettings) -> int:
    watchdog = watchdog_interval(os.environ, os.getpid())
    try:
        run_until_signalled(functools.partial(serve, watchdog=watchdog), settings)
    except ConfigError as exc:
        log.error("proxy.config_error", key=exc.key, error=str(exc))
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 2
    except BaseExceptionGroup as group:
        config, rest = group.split(ConfigError)
        if config is not None and rest is None:
            first = _first_leaf(config)
            log.error("proxy.config_error", error=str(first))
            sys.stderr.write(f"{PROG}: {first}\n")
            return 2
        log.error("proxy.fatal", error=str(group), exc_info=group)
        return 1
    except Exception as exc:
        log.error("proxy.fatal", error=str(exc), exc_info=exc)
        return 1
    log.info("shutdown.complete")
    return 0


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
