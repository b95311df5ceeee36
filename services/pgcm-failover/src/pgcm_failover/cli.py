"""Command line of pgcm-failover: parse settings, configure logging, run a command.

Exit codes:
    0  success (switchover done; status/plan shown; cleanup left nothing)
    1  failed and rolled back cleanly (nothing needs a human), refused, or not confirmed
    2  bad configuration (the message names the key), or a switchover without a
       terminal to confirm it on and without --yes
    3  failed and something needs a human (the report says what)
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

import anyio
import structlog

from pgcm_common.daemon import (
    CONVERT_COMMAND,
    add_convert_command,
    most_telling_error,
    run_convert_command,
    settings_sources_help,
)
from pgcm_common.errors import ConfigError, PgcmError
from pgcm_common.fasthelp import help_formatter
from pgcm_common.lifecycle import run_until_signalled
from pgcm_common.logging import bind_role, configure_logging
from pgcm_common.records import SwitchoverRecord, now_utc
from pgcm_common.settings import (
    common_arguments,
    parse_duration,
    render_toml,
    settings_from_args,
)
from pgcm_common.version import add_version_argument
from pgcm_failover.app import (
    Adapters,
    AdaptersFactory,
    Switchover,
    cleanup,
    collect_status,
    layout_of,
    make_plan,
    open_adapters,
)
from pgcm_failover.errors import CleanupRefused
from pgcm_failover.history import operator_identity, read_history, switchover_record, write_history
from pgcm_failover.maintenance import MAX_REASON_LENGTH, MaintenanceResult, switch_maintenance
from pgcm_failover.pipeline import Clock
from pgcm_failover.report import (
    CleanupResult,
    JsonValue,
    Plan,
    ProgressDisplay,
    Status,
    cleanup_to_dict,
    dumps,
    history_to_dict,
    maintenance_to_dict,
    plan_to_dict,
    render_cleanup,
    render_history,
    render_maintenance,
    render_plan,
    render_report,
    render_status,
    report_to_dict,
    status_to_dict,
    total_seconds,
)
from pgcm_failover.settings import FailoverSettings
from pgcm_failover.terminal import printable

__all__ = ["EXIT_BAD_CONFIG", "EXIT_FAILED", "EXIT_NEEDS_HUMAN", "EXIT_OK", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2
EXIT_NEEDS_HUMAN = 3

PROG = "pgcm-failover"
_COMMANDS_HELP = """\
Run a zero-downtime switchover of the PostgreSQL primary (the default command), show
the cluster's status, or clean up what a killed switchover left.

  pgcm-failover [run] [--target NODE] [--yes] [--dry-run] [--json]
  pgcm-failover status [--watch [INTERVAL]] [--json]
  pgcm-failover history [-n N] [--json]
  pgcm-failover maintenance on|off --reason TEXT [--json]
  pgcm-failover cleanup [--json]
  pgcm-failover show-config
  pgcm-failover convert-config ORIGINAL.toml
"""

_SWITCHOVER_HELP = """\
A switchover first shows its plan (from, to and why, replication lag, the oldest
transaction, the proxies it will wait for) and asks for confirmation on the terminal;
--yes skips the question (for scripts). Without a terminal and without --yes it
refuses (exit 2) and changes nothing.

Exit codes: 0 success, 1 failed and rolled back cleanly (or refused, or not
confirmed), 2 bad configuration (or no terminal to confirm on and no --yes), 3 failed
and something needs a human (the report says what).
"""

DESCRIPTION = f"{_COMMANDS_HELP}\n{settings_sources_help(FailoverSettings)}\n{_SWITCHOVER_HELP}"

NOT_CONFIRMED = f"""\
{PROG}: refusing to start a switchover: it must be confirmed, and stdin is not a
terminal to ask on. Pass --yes to run it from a script, or --dry-run to see the plan.
"""

DEFAULT_WATCH_INTERVAL = timedelta(seconds=2)
MIN_WATCH_INTERVAL = timedelta(milliseconds=100)
CLEAR_SCREEN = "\x1b[H\x1b[2J"

log = structlog.get_logger("pgcm.failover.cli")


def _watch_interval(text: str) -> timedelta:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if value < MIN_WATCH_INTERVAL:
        raise argparse.ArgumentTypeError(f"at least {MIN_WATCH_INTERVAL.total_seconds():g}s")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return value


def _status_arguments() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("command options")
    group.add_argument(
        "--watch",
        metavar="INTERVAL",
        nargs="?",
        const=DEFAULT_WATCH_INTERVAL,
        type=_watch_interval,
        default=argparse.SUPPRESS,
        help="refresh every INTERVAL (default 2s) until Ctrl-C (exit 0): redrawn in place "
        "on a terminal; with --json one JSON document per line and refresh",
    )
    return parent


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
            "--yes",
            "-y",
            action="store_true",
            default=argparse.SUPPRESS,
            help="start the switchover without showing the plan and asking (for scripts; "
            "without a terminal a switchover needs it)",
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
        parents=[common, json_only, _status_arguments()],
        help="show nodes (role, score, timeline, replication, lag), the etcd primary, "
        "proxies, PgBouncers, the lock; --watch to follow",
    )
    history = sub.add_parser(
        "history",
        parents=[common, json_only],
        help="show the last switchovers (newest first): start, who, from, to, result, "
        "paused time, phase timings",
    )
    history.add_argument(
        "-n",
        type=_positive_int,
        default=20,
        metavar="N",
        help="how many switchovers to show (default 20; etcd keeps history_limit)",
    )
    maintenance = sub.add_parser(
        "maintenance",
        parents=[common, json_only],
        help="put Pacemaker into or out of maintenance mode (through supervise; recorded "
        "in etcd with who and why; switchovers refuse while it is on)",
    )
    maintenance.add_argument("state", choices=("on", "off"), help="on or off")
    maintenance.add_argument(
        "--reason",
        default="",
        help=f"why (required for on; at most {MAX_REASON_LENGTH} characters)",
    )
    sub.add_parser(
        "cleanup",
        parents=[common, json_only],
        help="resume PgBouncers and clear a leftover move constraint after a killed switchover",
    )
    sub.add_parser(
        "show-config", parents=[common], help="print the effective configuration as TOML"
    )
    add_convert_command(sub)
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
    if args.command == CONVERT_COMMAND:
        return run_convert_command(PROG, args)
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
        _error(str(exc))
        return EXIT_BAD_CONFIG
    if loaded is not None:
        log.info("config_file.loaded", path=str(loaded.path), hash=loaded.sha256)
    if command == "show-config":
        sys.stdout.write(render_toml(settings, header=f"Effective configuration of {PROG}."))
        return EXIT_OK
    confirm = command == "run" and not dry_run and not getattr(args, "yes", False)
    if confirm and not sys.stdin.isatty():
        sys.stderr.write(NOT_CONFIRMED)
        return EXIT_BAD_CONFIG
    try:
        if command == "run":
            return _run_command(
                settings, adapters, args, confirm=confirm, progress=progress, clock=clock
            )
        return _read_command(command, settings, adapters, args)
    except ConfigError as exc:
        _error(str(exc))
        return EXIT_BAD_CONFIG
    except (PgcmError, OSError, ssl.SSLError) as exc:
        # Raised before anything was changed (etcd unreachable, TLS files unreadable):
        # the switchover itself records its errors in the report instead.
        log.error("failover.error", command=command, error=str(exc) or type(exc).__name__)
        _error(f"{command} failed: {exc}")
        return EXIT_FAILED


def _error(message: str) -> None:
    """Write ``PROG: message`` to stderr, escaped: errors quote values from etcd."""
    sys.stderr.write(f"{PROG}: {printable(message)}\n")


def _read_command(
    command: str, settings: FailoverSettings, adapters: AdaptersFactory, args: argparse.Namespace
) -> int:
    """Run a command other than a switchover; return its exit code."""
    as_json = bool(getattr(args, "json", False))
    if command == "history":
        return _history(settings, adapters, args.n, as_json=as_json)
    if command == "maintenance":
        return _maintenance(settings, adapters, args, as_json=as_json)
    if command == "status":
        watch: timedelta | None = getattr(args, "watch", None)
        if watch is not None:
            return _watch(settings, adapters, watch, as_json=as_json)
        return _status(settings, adapters, as_json=as_json)
    return _cleanup(settings, adapters, as_json=as_json)


def _run_command(
    settings: FailoverSettings,
    adapters: AdaptersFactory,
    args: argparse.Namespace,
    *,
    confirm: bool,
    progress: bool,
    clock: Clock,
) -> int:
    """Run ``run``: the dry run, or the switchover (after the operator confirmed it)."""
    as_json = bool(getattr(args, "json", False))
    target: str | None = getattr(args, "target", None)
    if getattr(args, "dry_run", False):
        return _dry_run(settings, adapters, target, as_json=as_json)
    if confirm:
        confirmed = _confirm(settings, adapters, target)
        if confirmed is None:
            return EXIT_FAILED
        target = confirmed
    return _switchover(settings, adapters, target, as_json=as_json, progress=progress, clock=clock)


def _run(go: Callable[[], Awaitable[None]]) -> bool:
    """Run ``go`` until done or signalled; raise its errors bare, not in ExceptionGroups.

    An error raised inside nested task groups (the etcd lock's keepalive group, the
    watch pumps) arrives wrapped once per group; the exit-code mapping needs the error
    itself, or the operator gets a traceback instead of a message.

    Returns whether a signal (Ctrl-C, SIGTERM) stopped it.
    """
    try:
        return run_until_signalled(go)
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

    started_at = now_utc()

    async def go() -> None:
        async with adapters(settings) as opened:
            try:
                await run.run(opened)
            finally:
                # Also after a failure or Ctrl-C: shielded, with its own deadline.
                with anyio.move_on_after(settings.cleanup_grace.total_seconds(), shield=True):
                    await _record(opened, settings, run, started_at)

    _run(go)
    report = run.report
    outcome, code = _outcome(run)
    log.info("failover.done", outcome=outcome, exit_code=code, error=report.error)
    if as_json:
        sys.stdout.write(dumps(report_to_dict(report, outcome=outcome)))
    else:
        sys.stdout.write(render_report(report, outcome=outcome))
    return code


def _outcome(run: Switchover) -> tuple[str, int]:
    """Return the run's outcome and exit code; note an interruption in its report."""
    report = run.report
    if not run.finished and run.error is None:
        report.error = report.error or "interrupted by a signal; every undo step ran"
    if report.needs_human:
        return "needs_human", EXIT_NEEDS_HUMAN
    if report.error is not None or run.error is not None:
        return "rolled_back", EXIT_FAILED
    return "succeeded", EXIT_OK


async def _record(
    adapters: Adapters, settings: FailoverSettings, run: Switchover, started_at: datetime
) -> None:
    """Write the run's record to the history in etcd; log, never raise, on failure."""
    outcome, _code = _outcome(run)
    record = switchover_record(
        run.report,
        outcome=outcome,
        started_at=started_at,
        finished_at=now_utc(),
        total_s=total_seconds(run.report),
        by=operator_identity(),
        pid=os.getpid(),
    )
    try:
        await write_history(
            adapters.store, layout_of(settings), record, keep=settings.history_limit
        )
    except (PgcmError, TimeoutError) as exc:
        log.warning(
            "failover.history.write_failed",
            error=str(exc) or type(exc).__name__,
            msg="this switchover is missing from 'pgcm-failover history'",
        )


def _history(
    settings: FailoverSettings, adapters: AdaptersFactory, limit: int, *, as_json: bool
) -> int:
    found: list[tuple[list[SwitchoverRecord], list[str]]] = []

    async def go() -> None:
        async with adapters(settings) as opened:
            found.append(await read_history(opened.store, layout_of(settings), limit=limit))

    _run(go)
    if not found:
        return EXIT_FAILED
    records, invalid = found[0]
    if as_json:
        sys.stdout.write(dumps(history_to_dict(records, invalid)))
    else:
        sys.stdout.write(render_history(records, invalid))
    return EXIT_OK


def _maintenance(
    settings: FailoverSettings,
    adapters: AdaptersFactory,
    args: argparse.Namespace,
    *,
    as_json: bool,
) -> int:
    enabled = args.state == "on"
    reason: str = args.reason
    if enabled and not reason.strip():
        _error("maintenance on needs --reason (why, for the record and the logs)")
        return EXIT_BAD_CONFIG
    if len(reason) > MAX_REASON_LENGTH:
        _error(f"--reason is longer than {MAX_REASON_LENGTH} characters")
        return EXIT_BAD_CONFIG
    results: list[MaintenanceResult] = []

    async def go() -> None:
        async with adapters(settings) as opened:
            results.append(
                await switch_maintenance(
                    opened.maintenance,
                    opened.store,
                    layout_of(settings),
                    enabled=enabled,
                    reason=reason,
                    by=operator_identity(),
                    call_timeout_s=settings.pacemaker_timeout.total_seconds(),
                )
            )

    _run(go)
    if not results:
        return EXIT_FAILED
    result = results[0]
    log.info("failover.maintenance", enabled=enabled, endpoint=result.record.endpoint)
    if as_json:
        doc: dict[str, JsonValue] = {
            "maintenance": maintenance_to_dict(result.record),
            "skipped": list(result.skipped),
        }
        sys.stdout.write(dumps(doc))
    else:
        lines = [render_maintenance(result.record), f"set via {result.record.endpoint}"]
        lines.extend(f"(did not answer: {endpoint})" for endpoint in result.skipped)
        sys.stdout.write("".join(printable(line) + "\n" for line in lines))
    return EXIT_OK


def _confirm(
    settings: FailoverSettings, adapters: AdaptersFactory, target: str | None
) -> str | None:
    """Show the plan on stderr and ask on the terminal; return the confirmed target.

    Returns None (nothing was changed) when the plan would be refused or the operator
    does not answer yes. The confirmed target is pinned for the switchover: it must not
    become another node because promotion scores changed while the operator read.
    """
    plan = _fetch_plan(settings, adapters, target)
    if plan is None:
        return None
    sys.stderr.write(render_plan(plan, dry_run=False))
    if not plan.would_proceed or plan.target is None:
        sys.stderr.write(f"{PROG}: nothing was changed.\n")
        return None
    question = f"Move the primary from {plan.old_primary} to {plan.target}? [y/N] "
    sys.stderr.write("\n" + printable(question))
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer not in {"y", "yes"}:
        sys.stderr.write(f"{PROG}: not confirmed; nothing was changed.\n")
        log.info("failover.not_confirmed", target=plan.target)
        return None
    return plan.target


def _fetch_plan(
    settings: FailoverSettings, adapters: AdaptersFactory, target: str | None
) -> Plan | None:
    """Work out the switchover plan, or None when it could not be made (already reported)."""
    plans: list[Plan] = []

    async def go() -> None:
        async with adapters(settings) as opened:
            plans.append(await make_plan(opened, settings, target))

    _run(go)
    return plans[0] if plans else None


def _dry_run(
    settings: FailoverSettings, adapters: AdaptersFactory, target: str | None, *, as_json: bool
) -> int:
    plan = _fetch_plan(settings, adapters, target)
    if plan is None:
        return EXIT_FAILED
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


def _watch(
    settings: FailoverSettings, adapters: AdaptersFactory, interval: timedelta, *, as_json: bool
) -> int:
    """Show the status every ``interval`` until Ctrl-C or SIGTERM (then exit 0).

    A refresh that fails (etcd briefly unreachable) is shown and retried at the next
    interval: a watch outlives the trouble it is there to show.
    """
    redraw = not as_json and sys.stdout.isatty()

    def show(status: Status | None, error: str | None) -> None:
        at = now_utc().isoformat(timespec="seconds")
        if as_json:
            doc: dict[str, JsonValue] = {"at": at, "error": error}
            if status is not None:
                doc = {"at": at, **status_to_dict(status)}
            sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
        else:
            # Home and clear, then the new frame: redrawn in place on a terminal.
            frame = CLEAR_SCREEN if redraw else "\n"
            frame += printable(f"{PROG} status, every {interval.total_seconds():g}s, at {at}")
            frame += " (Ctrl-C to stop)\n\n"
            frame += render_status(status) if status else f"error: {printable(error or '')}\n"
            sys.stdout.write(frame)
        sys.stdout.flush()

    async def go() -> None:
        async with adapters(settings) as opened:
            while True:
                try:
                    status = await collect_status(opened, settings)
                except PgcmError as exc:
                    log.warning("failover.status.error", error=str(exc))
                    show(None, str(exc) or type(exc).__name__)
                else:
                    show(status, None)
                await anyio.sleep(interval.total_seconds())

    _run(go)
    return EXIT_OK


def _cleanup(settings: FailoverSettings, adapters: AdaptersFactory, *, as_json: bool) -> int:
    results: list[CleanupResult] = []

    async def go() -> None:
        async with adapters(settings) as opened:
            results.append(await cleanup(opened, settings))

    try:
        _run(go)
    except CleanupRefused as exc:
        _error(f"cleanup refused: {exc}")
        return EXIT_FAILED
    if not results:
        return EXIT_FAILED
    result = results[0]
    sys.stdout.write(dumps(cleanup_to_dict(result)) if as_json else render_cleanup(result))
    return EXIT_NEEDS_HUMAN if result.needs_human else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
