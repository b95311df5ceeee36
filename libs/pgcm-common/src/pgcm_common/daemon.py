"""The command line every pgcm daemon shares: ``run`` (default) and ``show-config``.

A daemon's ``cli.py`` only names itself and its settings and hands over its ``serve``
coroutine; parsing, logging set-up, settings errors (exit 2), ``show-config`` and the
mapping of failures to exit codes (0 clean stop, 1 fatal, 2 bad configuration) live
here once.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar, final

import structlog

from pgcm_common.errors import ConfigError, PgcmError
from pgcm_common.fasthelp import help_formatter
from pgcm_common.lifecycle import run_until_signalled, systemd_watchdog
from pgcm_common.logging import bind_role, configure_logging
from pgcm_common.settings import PgcmSettings, common_arguments, render_toml, settings_from_args
from pgcm_common.settings.convert import convert_original_file
from pgcm_common.version import add_version_argument

__all__ = [
    "CONVERT_COMMAND",
    "EXIT_BAD_CONFIG",
    "EXIT_FATAL",
    "EXIT_OK",
    "Daemon",
    "add_convert_command",
    "most_telling_error",
    "run_convert_command",
]

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_BAD_CONFIG = 2

log = structlog.get_logger("pgcm.daemon")

S = TypeVar("S", bound=PgcmSettings)


@final
@dataclass(frozen=True, slots=True)
class Daemon(Generic[S]):
    """One daemon's command line.

    ``load_serve`` returns the daemon's ``serve(settings, *, watchdog, task_status)``; it
    is called only for ``run`` so that ``--help`` and ``show-config`` do not import
    the etcd client and grpclib. ``watchdog`` is systemd's watchdog timeout, or None
    when off.
    """

    prog: str
    role: str
    description: str
    settings_cls: type[S]
    load_serve: Callable[[], Callable[..., Awaitable[None]]]

    def build_parser(self) -> argparse.ArgumentParser:
        """Return the argument parser (exposed for tests and docs)."""
        common = common_arguments(self.settings_cls)
        parser = argparse.ArgumentParser(
            prog=self.prog,
            description=self.description,
            formatter_class=help_formatter,
            parents=[common],
        )
        add_version_argument(parser, self.prog)
        sub = parser.add_subparsers(dest="command", metavar="COMMAND")
        sub.add_parser(
            "run", parents=[common], help="run the service until SIGTERM/SIGINT (the default)"
        )
        sub.add_parser(
            "show-config",
            parents=[common],
            help="print the effective configuration as TOML (secrets redacted)",
        )
        add_convert_command(sub)
        return parser

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Run the command line; return the process exit code."""
        args = self.build_parser().parse_args(argv)
        if args.command == CONVERT_COMMAND:
            return run_convert_command(self.prog, args)
        log_format = getattr(args, "log_format", "auto")
        configure_logging(
            json=None if log_format == "auto" else log_format == "json",
            level=getattr(args, "log_level", "info"),
        )
        bind_role(self.role)
        try:
            settings, loaded = settings_from_args(self.settings_cls, args)
        except ConfigError as exc:
            sys.stderr.write(f"{self.prog}: {exc}\n")
            return EXIT_BAD_CONFIG
        if loaded is not None:
            log.info("config_file.loaded", path=str(loaded.path), hash=loaded.sha256)
        if (args.command or "run") == "show-config":
            header = f"Effective configuration of {self.prog}."
            sys.stdout.write(render_toml(settings, header=header))
            return EXIT_OK
        return self.run(settings)

    def run(self, settings: S) -> int:
        """Serve until the first SIGTERM/SIGINT; return 0, 1 or 2."""
        serve = functools.partial(
            self.load_serve(), watchdog=systemd_watchdog(os.environ, os.getpid())
        )
        try:
            try:
                signalled = run_until_signalled(serve, settings)
            except BaseExceptionGroup as group:
                raise most_telling_error(group) from group
        except ConfigError as exc:
            # Settings that only fail when used: a socket directory, a TLS file.
            log.error("daemon.config_error", error=str(exc))
            sys.stderr.write(f"{self.prog}: {exc}\n")
            return EXIT_BAD_CONFIG
        except PgcmError as exc:
            log.error("daemon.fatal", error=str(exc), msg="stopping")
            return EXIT_FATAL
        except Exception as exc:
            log.exception("daemon.crash", error=repr(exc))
            return EXIT_FATAL
        if not signalled:
            # serve() runs until cancelled: ending on its own is a bug or a swallowed
            # cancellation. Exit 1 so that systemd (Restart=on-failure) starts it again.
            log.error("daemon.stopped_unexpectedly", msg="service loop ended without a signal")
            return EXIT_FATAL
        log.info("shutdown.complete", msg="stopped cleanly")
        return EXIT_OK


CONVERT_COMMAND = "convert-config"


def add_convert_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``convert-config ORIGINAL.toml`` (the same command in every pgcm service)."""
    convert = sub.add_parser(
        CONVERT_COMMAND,
        help="print the pgcm TOML file equivalent to the original's flat config.toml",
        description="Print the pgcm TOML file equivalent to a config.toml of the original "
        "(gocardless/pgsql-cluster-manager): one file with the tables of all three "
        "services, each key naming the original key it came from. Every service also "
        "reads the original's file unchanged; converting is optional. Secrets are "
        "copied as they are: write the output to a file only the service user can read.",
    )
    convert.add_argument("original", type=Path, metavar="ORIGINAL.toml")


def run_convert_command(prog: str, args: argparse.Namespace) -> int:
    """Print the conversion of ``args.original``; return 0, or 2 naming a bad key."""
    try:
        text = convert_original_file(args.original)
    except ConfigError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return EXIT_BAD_CONFIG
    sys.stdout.write(text)
    return EXIT_OK


def most_telling_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
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
