"""Run ``crm_mon`` without blocking the event loop and turn its XML into a ClusterState.

``crm_mon`` talks to local Pacemaker daemons over IPC and can hang when they are wedged
(seen when pacemaker-based is busy writing a large CIB). The child therefore runs in its
own process group, and whenever the read is cancelled — usually by the caller's
``anyio.fail_after`` — the whole group is SIGKILLed and reaped before the cancellation
propagates. A command prefix (``nsenter … --``, ``ssh host``) is killed with it.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from subprocess import DEVNULL, PIPE
from typing import Protocol, final

import anyio
import structlog
from anyio.abc import ByteReceiveStream

from pgcm_common._pacemaker.errors import PacemakerCommandFailed
from pgcm_common._pacemaker.model import ClusterState
from pgcm_common._pacemaker.parse import MAX_INPUT_BYTES, crm_mon_failure_detail, parse_crm_mon
from pgcm_common.processes import child_environment

__all__ = [
    "CommandOutput",
    "CrmMon",
    "CrmMonDialect",
    "CrmMonOptions",
    "CrmMonReader",
    "read_cluster_state",
    "run_command",
]

log = structlog.get_logger("pgcm_common.pacemaker")

# Pacemaker 1.1's getopt rejects --output-as with this text on stderr.
_UNKNOWN_OPTION_MARKERS = ("unrecognized option", "output-as")


class CrmMonDialect(enum.Enum):
    """Which XML flag to pass to ``crm_mon``."""

    AUTO = "auto"
    """``--output-as=xml``; if crm_mon does not know it (Pacemaker 1.1), ``--as-xml``."""
    OUTPUT_AS_XML = "output-as-xml"
    """Pacemaker ≥ 2.0 only."""
    LEGACY_AS_XML = "as-xml"
    """Pacemaker 1.1 (2.x still accepts it, deprecated)."""


@final
@dataclass(frozen=True, slots=True)
class CrmMonOptions:
    """How to run ``crm_mon`` and which resource to read.

    Attributes:
        resource_id: the promotable clone's primitive (``pgsqld``) or the clone
            (``pgsql-ha``); the clone containing it is detected in the status.
        command_prefix: argv run before ``crm_mon``, e.g.
            ``("nsenter", "-t", "1234", "-n", "-m", "-u", "-p", "--")`` in tests.
        executable: the ``crm_mon`` program.
        dialect: which XML flag to use.
        timeout: when set, :func:`read_cluster_state` bounds itself and raises a
            ``TimeoutError`` naming the command; when None the caller bounds it
            (``with anyio.fail_after(...)``). Either way the child is killed.
        kill_grace: how long to wait for the killed process group to be reaped.
    """

    resource_id: str = "pgsqld"
    command_prefix: tuple[str, ...] = ()
    executable: str = "crm_mon"
    dialect: CrmMonDialect = CrmMonDialect.AUTO
    timeout: timedelta | None = None
    kill_grace: timedelta = field(default=timedelta(seconds=5))

    def argv(self, dialect: CrmMonDialect) -> tuple[str, ...]:
        """Return the full command line for ``dialect`` (AUTO means ``--output-as=xml``)."""
        if dialect is CrmMonDialect.LEGACY_AS_XML:
            # 1.1 prints node attributes in its XML only when asked with -A.
            return (*self.command_prefix, self.executable, "-1", "-A", "--as-xml")
        # --fence-history=2 adds the latest successful fencing of each node to the pending
        # and failed actions crm_mon prints by default: an operator wants to see that a
        # node was fenced, not only that fencing is under way.
        return (
            *self.command_prefix,
            self.executable,
            "-1",
            "--output-as=xml",
            "--fence-history=2",
        )


class CrmMonReader(Protocol):
    """Reads the current cluster state; the seam failover and supervise depend on."""

    async def read_cluster_state(self) -> ClusterState:
        """Return a fresh snapshot.

        Raises:
            PacemakerError: crm_mon failed or printed something we cannot trust.
        """
        ...


@final
class CrmMon:
    """The real :class:`CrmMonReader`: runs ``crm_mon`` with fixed options."""

    def __init__(self, options: CrmMonOptions) -> None:
        self._options = options

    @property
    def options(self) -> CrmMonOptions:
        """Return the options every read uses."""
        return self._options

    async def read_cluster_state(self) -> ClusterState:
        """Run ``crm_mon`` once and parse it; see :func:`read_cluster_state`."""
        return await read_cluster_state(self._options)


@final
@dataclass(frozen=True, slots=True)
class CommandOutput:
    """What a finished command printed."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def stderr_text(self) -> str:
        """Return stderr decoded leniently, for messages."""
        return self.stderr.decode("utf-8", "replace")


async def read_cluster_state(options: CrmMonOptions) -> ClusterState:
    """Run ``crm_mon`` once and parse its XML.

    Raises:
        PacemakerCommandFailed: crm_mon could not be started, exited non-zero or printed
            too much; the message holds its stderr and its own XML status.
        CrmMonParseError: the XML is malformed or not crm_mon's.
        PromotableResourceNotFound: no promotable clone contains the resource.
        TimeoutError: ``options.timeout`` elapsed; the child was killed.

    Cancellation:
        The child's whole process group is SIGKILLed and reaped (shielded, bounded by
        ``options.kill_grace``) before the cancellation propagates.
    """
    if options.timeout is None:
        return await _read(options)
    seconds = options.timeout.total_seconds()
    try:
        with anyio.fail_after(seconds):
            return await _read(options)
    except TimeoutError as exc:
        command = " ".join(options.argv(options.dialect))
        raise TimeoutError(f"{command} did not finish within {seconds:g}s and was killed") from exc


async def _read(options: CrmMonOptions) -> ClusterState:
    dialect = options.dialect
    output = await run_command(options.argv(dialect), kill_grace=options.kill_grace)
    if dialect is CrmMonDialect.AUTO and output.returncode != 0 and _is_unknown_option(output):
        log.info(
            "pacemaker.crm_mon.fallback",
            msg="crm_mon does not know --output-as; retrying with --as-xml (Pacemaker 1.1)",
        )
        dialect = CrmMonDialect.LEGACY_AS_XML
        output = await run_command(options.argv(dialect), kill_grace=options.kill_grace)
    if output.returncode != 0:
        raise PacemakerCommandFailed(
            output.argv,
            output.returncode,
            output.stderr_text,
            detail=crm_mon_failure_detail(output.stdout),
        )
    return parse_crm_mon(output.stdout, resource_id=options.resource_id)


def _is_unknown_option(output: CommandOutput) -> bool:
    stderr = output.stderr_text.lower()
    return all(marker in stderr for marker in _UNKNOWN_OPTION_MARKERS)


async def run_command(
    argv: Sequence[str], *, kill_grace: timedelta = timedelta(seconds=5)
) -> CommandOutput:
    """Run ``argv`` to completion in its own process group and collect its output.

    The child gets :func:`~pgcm_common.processes.child_environment`: never the
    service's secrets.

    Args:
        argv: the command; never interpreted by a shell.
        kill_grace: how long to wait for the process to be reaped after SIGKILL.

    Raises:
        PacemakerCommandFailed: the command could not be started or printed more than
            the crm_mon size limit (it is killed then).

    Cancellation:
        SIGKILLs the whole process group (prefixes such as nsenter fork the real tool),
        then reaps it, shielded, for at most ``kill_grace``; the cancellation propagates.
    """
    command = tuple(argv)
    try:
        process = await anyio.open_process(
            command,
            stdin=DEVNULL,
            stdout=PIPE,
            stderr=PIPE,
            start_new_session=True,
            env=child_environment(),
        )
    except OSError as exc:
        raise PacemakerCommandFailed(command, None, str(exc)) from exc
    stdout, stderr = _Sink(), _Sink()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain, process.stdout, stdout, tg.cancel_scope)
            tg.start_soon(_drain, process.stderr, stderr, tg.cancel_scope)
        _check_size(command, stdout, stderr)
        returncode = await process.wait()
    except BaseException:
        # Also when the leader already exited: a forked tool may still hold the pipes.
        log.warning("pacemaker.command.kill", argv=command, pid=process.pid)
        _kill_group(process.pid)
        raise
    finally:
        with anyio.move_on_after(kill_grace.total_seconds(), shield=True):
            await process.aclose()
    return CommandOutput(command, returncode, bytes(stdout.data), bytes(stderr.data))


def _check_size(command: tuple[str, ...], *sinks: _Sink) -> None:
    if any(sink.overflow for sink in sinks):
        raise PacemakerCommandFailed(
            command, None, "", detail=f"printed more than {MAX_INPUT_BYTES} bytes; killed"
        )


@dataclass(slots=True)
class _Sink:
    data: bytearray = field(default_factory=bytearray)
    overflow: bool = False


async def _drain(stream: ByteReceiveStream | None, sink: _Sink, scope: anyio.CancelScope) -> None:
    if stream is None:
        return
    async for chunk in stream:
        sink.data += chunk
        if len(sink.data) > MAX_INPUT_BYTES:
            sink.overflow = True
            scope.cancel()
            return


def _kill_group(pid: int) -> None:
    # start_new_session made the child a group leader: its PID is the group id, and the
    # kernel does not hand out a PID still in use as a group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
