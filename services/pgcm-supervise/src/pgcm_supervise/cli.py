"""Command line of pgcm-supervise: parse settings, configure logging, run.

Exit codes: 0 clean stop, 1 fatal error, 2 bad configuration (the message names the key).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import structlog

from pgcm_common.errors import ConfigError
from pgcm_common.logging import bind_role, configure_logging
from pgcm_common.settings import common_arguments, render_toml, settings_from_args
from pgcm_supervise.settings import SuperviseSettings

__all__ = ["main"]

PROG = "pgcm-supervise"
DESCRIPTION = """\
Supervise a PostgreSQL node: publish Pacemaker's primary to etcd and serve the
failover gRPC API (health_check, pause, resume, migrate, unmigrate).

Status: this build has settings, --help and show-config only; 'run' (the default
command) logs 'not implemented yet' and exits 1.

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
        "run", parents=[common], help="run the service (the default; not implemented yet)"
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
    log.error(
        "supervise.not_implemented",
        command=command,
        msg="this build only validates settings; the service itself is not implemented yet",
    )
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
