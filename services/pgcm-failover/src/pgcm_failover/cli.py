"""Command line of pgcm-failover: parse settings, configure logging, run a command.

Exit codes:
    0  success (switchover done; status/plan shown; cleanup left nothing)
    1  failed and rolled back cleanly (nothing needs a human), or refused
    2  bad configuration (the message names the key)
    3  failed and something needs a human (the report says what)
"""

from __future__ import annotations

import argparse
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

import structlog

from pgcm_common.daemon import most_telling_error
from pgcm_common.errors import ConfigError, PgcmError
from pgcm_common.fasthelp import help_formatter
from pgcm_common.lifecycle import run_until_signalled
from pgcm_common.logging import bind_role, configure_logging
from pgcm_common.settings import common_arguments, render_toml, settings_from_args
from pgcm_common.version import add_version_argument
from pgcm_failover.app import (
    AdaptersFactory,
    Switchover,
    cleanup,
    collect_status,
    make_plan,
    open_adapters,
)
from pgcm_failover.errors import CleanupRefused
from pgcm_failover.pipeline import Clock
from pgcm_failover.report import (
    CleanupResult,
    Plan,
    ProgressDisplay,
    Status,
    cleanup_to_dict,
    dumps,
    plan_to_dict,
    render_cleanup,
    render_plan,
    render_report,
    render_status,
    report_to_dict,
    status_to_dict,
)
from pgcm_failover.settings import FailoverSettings

__all__ = ["EXIT_BAD_CONFIG", "EXIT_FAILED", "EXIT_NEEDS_HUMAN", "EXIT_OK", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2
EXIT_NEEDS_HUMAN = 3

PROG = "pgcm-failover"
DESCRIPTION = """\
Run a zero-downtime switchover of the PostgreSQL primary (the default command), show
the cluster's status, or clean up what a killed switchover left.

  pgcm-failover [run] [--target NODE] [--dry-run] [--json]
  pgcm-failover status [--json]
  pgcm-failover cleanup [--json]
  pgcm-failover show-config

Settings come from (lowest to highest precedence) the defaults, the TOML file given
with --config-file (tables [failover], [cluster] and [etcd]; other services' tables are
ignored), PGCM_* environment variables, and the flags below. Durations take Go-style
values such as 500ms, 5s, 1m30s.

Exit codes: 0 success, 1 failed and rolled back cleanly (or refused), 2 bad
configuration, 3 failed and something needs a human (the report says what).
"""

log = structlog.get_logger("pgcm.failover.cli")


def _action_arguments(*, run: bool) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("command options")
    group.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the result as JSON on stdout",
    )
    if run:
        group.add_argument(
            "--target",
            metavar="NODE",
            default=argparse.SUPPRESS,
            help="Pacemaker node to promote (default: the cluster's choice)",
        )
        group.add_argument(
            "--dry-run",
            action="store_true",
            default=argparse.SUPPRESS,
            help="print the plan (target and why, endpoints, proxies, lag, long "
            "transactions) and change nothing",
        )
    return parent


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser (exposed for tests and docs)."""
    common = common_arguments(FailoverSettings)
    run_options = _action_arguments(run=True)
    json_only = _action_arguments(run=False)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        formatter_class=help_formatter,
        parents=[common, run_options],
    )
    add_version_argument(parser, PROG)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", parents=[common, run_options], help="run a switchover (the default)")
    sub.add_parser(
        "status",
        parents=[common, json_only],
        help="show nodes, the etcd primary, proxies, PgBouncers, the lock",
    )
    sub.add_parser(
        "cleanup",
        parents=[common, json_only],
        help="resume PgBouncers and clear a leftover move constraint after a killed switchover",
    )
    sub.add_parser(
        "show-config", parents=[common], help="print the effective configuration as TOML"
    )
    return parser


def main(  # noqa: PLR0911 - one return per exit path keeps the exit codes readable
    argv: Sequence[str] | None = None,
    *,
    adapters: AdaptersFactory = open_adapters,
    clock: Clock = time.monotonic,
) -> int:
    """Run the command line; return the process exit code.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
        adapters: builds etcd and the supervise clients (tests pass fakes).
        clock: the monotonic clock the switchover report is timed with.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command or "run"
    as_json = bool(getattr(args, "json", False))
    dry_run = bool(getattr(args, "dry_run", False))
    progress = command == "run" and not dry_run and not as_json and sys.stderr.isatty()
    log_format = getattr(args, "log_format", "auto")
    # With the live progress display on a terminal, routine log lines would tear it up:
    # show warnings and errors only unless the operator asked for a level.
    level = getattr(args, "log_level", "warning" if progress else "info")
    configure_logging(json=None if log_format == "auto" else log_format == "json", level=level)
    bind_role("failover")
    try:
        settings, loaded = settings_from_args(FailoverSettings, args)
    except ConfigError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return EXIT_BAD_CONFIG
    if loaded is not None:
        log.info("config_file.loaded", path=str(loaded.path), hash=loaded.sha256)
    if command == "show-config":
        sys.stdout.write(render_toml(settings, header=f"Effective configuration of {PROG}."))
        return EXIT_OK
    target: str | None = getattr(args, "target", None)
    try:
        if command == "status":
            return _status(settings, adapters, as_json=as_json)
        if command == "cleanup":
            return _cleanup(settings, adapters, as_json=as_json)
        if dry_run:
            return _dry_run(settings, adapters, target, as_json=as_json)
        return _switchover(
            settings, adapters, target, as_json=as_json, progress=progress, clock=clock
        )
    except ConfigError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return EXIT_BAD_CONFIG
    except (PgcmError, OSError, ssl.SSLError) as exc:
        # Raised before anything was changed (etcd unreachable, TLS files unreadable):
        # the switchover itself records its errors in the report instead.
        log.error("failover.error", command=command, error=str(exc) or type(exc).__name__)
        sys.stderr.write(f"{PROG}: {command} failed: {exc}\n")
        return EXIT_FAILED


def _run(go: Callable[[], Awaitable[None]]) -> None:
    """Run ``go`` until done or signalled; raise its errors bare, not in ExceptionGroups.

    An error raised inside nested task groups (the etcd lock's keepalive group, the
    watch pumps) arrives wrapped once per group; the exit-code mapping needs the error
    itself, or the operator gets a traceback instead of a message.
    """
    try:
        run_until_signalled(go)
    except BaseExceptionGroup as group:
        leaf = most_telling_error(group)
        if not isinstance(leaf, Exception):
            raise
        raise leaf from group


def _switchover(
    settings: FailoverSettings,
    adapters: AdaptersFactory,
    target: str | None,
    *,
    as_json: bool,
    progress: bool,
    clock: Clock,
) -> int:
    run = Switchover(
        settings,
        target,
        on_phase=ProgressDisplay(sys.stderr) if progress else None,
        clock=clock,
    )

    async def go() -> None:
        async with adapters(settings) as opened:
            await run.run(opened)

    _run(go)
    report = run.report
    if not run.finished and run.error is None:
        report.error = report.error or "interrupted by a signal; every undo step ran"
    failed = report.error is not None or run.error is not None
    if report.needs_human:
        outcome, code = "needs_human", EXIT_NEEDS_HUMAN
    elif failed:
        outcome, code = "rolled_back", EXIT_FAILED
    else:
        outcome, code = "succeeded", EXIT_OK
    log.info("failover.done", outcome=outcome, exit_code=code, error=report.error)
    if as_json:
        sys.stdout.write(dumps(report_to_dict(report, outcome=outcome)))
    else:
        sys.stdout.write(render_report(report, outcome=outcome))
    return code


def _dry_run(
    settings: FailoverSettings, adapters: AdaptersFactory, target: str | None, *, as_json: bool
) -> int:
    plans: list[Plan] = []

    async def go() -> None:
        async with adapters(settings) as opened:
            plans.append(await make_plan(opened, settings, target))

    _run(go)
    if not plans:
        return EXIT_FAILED
    plan = plans[0]
    sys.stdout.write(dumps(plan_to_dict(plan)) if as_json else render_plan(plan))
    return EXIT_OK if plan.would_proceed else EXIT_FAILED


def _status(settings: FailoverSettings, adapters: AdaptersFactory, *, as_json: bool) -> int:
    found: list[Status] = []

    async def go() -> None:
        async with adapters(settings) as opened:
            found.append(await collect_status(opened, settings))

    _run(go)
    if not found:
        return EXIT_FAILED
    sys.stdout.write(dumps(status_to_dict(found[0])) if as_json else render_status(found[0]))
    return EXIT_OK


def _cleanup(settings: FailoverSettings, adapters: AdaptersFactory, *, as_json: bool) -> int:
    results: list[CleanupResult] = []

    async def go() -> None:
        async with adapters(settings) as opened:
            results.append(await cleanup(opened, settings))

    try:
        _run(go)
    except CleanupRefused as exc:
        sys.stderr.write(f"{PROG}: cleanup refused: {exc}\n")
        return EXIT_FAILED
    if not results:
        return EXIT_FAILED
    result = results[0]
    sys.stdout.write(dumps(cleanup_to_dict(result)) if as_json else render_cleanup(result))
    return EXIT_NEEDS_HUMAN if result.needs_human else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
