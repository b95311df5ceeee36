"""Command line of pgcm-supervise: parse settings, configure logging, run.

Exit codes: 0 clean stop, 1 fatal error, 2 bad configuration (the message names the key).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import structlog

from pgcm_common.errors import ConfigError, PgcmError
from pgcm_common.lifecycle import run_until_signalled
from pgcm_common.logging import bind_role, configure_logging
from pgcm_common.settings import common_arguments, render_toml, settings_from_args
from pgcm_supervise.settings import SuperviseSettings

__all__ = ["main"]

PROG = "pgcm-supervise"
DESCRIPTION = """\
Supervise a PostgreSQL node: publish Pacemaker's primary to etcd and serve the
failover gRPC API (health_check, pause, resume, migrate, unmigrate).

Commands: run (the default) serves until SIGTERM/SIGINT; show-config prints the
effective configuration as TOML (secrets redacted).

Settings come from (lowest to highest precedence) the defaults, the TOML file given
with --config-file (tables [supervise] and [cluster]; other services' tables are ignored),
PGCM_* environment variables, and the flags below. Durations take Go-style values such
as 500ms, 5s, 1m30s. Exit codes: 0 clean stop, 1 fatal error, 2 bad configuration.
"""

log = structlog.get_logger("pgcm.supervise.cli")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser (exposed for tests and docs)."""
    common = common_arguments(SuperviseSettings)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "run", parents=[common], help="run the service until SIGTERM/SIGINT (the default)"
    )
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
    bind_role("supervise")
    try:
        settings, loaded = settings_from_args(SuperviseSettings, args)
    except ConfigError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 2
    if loaded is not None:
        log.info("config_file.loaded", path=str(loaded.path), hash=loaded.sha256)
    command = args.command or "run"
    if command == "show-config":
        sys.stdout.write(render_toml(settings, header=f"Effective configuration of {PROG}."))
        return 0
    return run(settings)


def run(settings: SuperviseSettings) -> int:
    """Serve until the first SIGTERM/SIGINT; return the exit code (0, 1 or 2)."""
    # Imported here so that --help and show-config do not pay for grpclib and aetcd.
    from pgcm_supervise.app import serve  # noqa: PLC0415

    log.info("supervise.start", node=settings.node_name, msg="starting")
    try:
        try:
            run_until_signalled(serve, settings)
        except BaseExceptionGroup as group:
            raise _first_leaf(group) from group
    except ConfigError as exc:
        # Settings that only fail when used (a nudge socket directory, a TLS file).
        sys.stderr.write(f"{PROG}: {exc}\n")
        log.error("supervise.config_error", error=str(exc))
        return 2
    except PgcmError as exc:
        log.error("supervise.fatal", error=str(exc), msg="stopping")
        return 1
    except Exception as exc:
        log.exception("supervise.crash", error=repr(exc))
        return 1
    log.info("supervise.stop", msg="stopped cleanly")
    return 0


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Return the most telling error of nested task-group failures (ConfigError first)."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for kind in (ConfigError, PgcmError, Exception):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0] if leaves else group


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
