"""Fast detection: the Pacemaker alert agent nudges supervise over a unix datagram socket.

Polling ``crm_mon`` every 500 ms bounds how late a promotion is seen; the alert agent
(``deploy/pacemaker/pgcm-alert-agent``) runs on every node as soon as Pacemaker promotes,
demotes, starts or stops the PostgreSQL resource and sends one datagram to
:func:`serve_nudges`, which sets a :class:`Wakeup` so the publisher re-reads at once.

The datagram's content is informational only (logged at debug): whoever can write to the
socket can only make supervise read ``crm_mon`` sooner, never change what it publishes.
"""

from __future__ import annotations

import contextlib
import grp
import os
import socket
import stat
from pathlib import Path
from typing import final

import anyio
import anyio.abc
import anyio.to_thread
import structlog
from anyio.abc import TaskStatus

from pgcm_common.errors import ConfigError
from pgcm_supervise.metrics import SuperviseMetrics

__all__ = ["NudgeSocketError", "Wakeup", "serve_nudges"]

log = structlog.get_logger("pgcm.supervise.nudge")

_MAX_DATAGRAM = 1024
# rw for owner and group: Pacemaker runs alert agents as hacluster:haclient.
_SOCKET_MODE = 0o660
_CLEANUP_S = 2.0


@final
class NudgeSocketError(ConfigError):
    """The nudge socket cannot be created where the settings say."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__("nudge_socket", f"{path}: {problem}")


@final
class Wakeup:
    """A level-triggered, coalescing wake-up: many nudges during one read cause one re-read."""

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._promotion = False
        self.count = 0

    def set(self, *, promotion: bool = False) -> None:
        """Wake the waiter now, or make its next wait return at once.

        Args:
            promotion: the nudge reports a promote (see :meth:`take_promotion`).
        """
        self.count += 1
        self._promotion = self._promotion or promotion
        self._event.set()

    def take_promotion(self) -> bool:
        """Return whether a promote was reported since the last call, and forget it."""
        promotion, self._promotion = self._promotion, False
        return promotion

    async def wait(self, seconds: float) -> bool:
        """Wait until :meth:`set` or ``seconds`` elapse; return whether it was a nudge.

        The nudge is consumed: the next wait blocks again until the next :meth:`set`.

        Cancellation:
            Nothing to clean up.
        """
        with anyio.move_on_after(seconds):
            await self._event.wait()
        nudged = self._event.is_set()
        if nudged:
            self._event = anyio.Event()
        return nudged


async def serve_nudges(
    path: Path,
    wakeup: Wakeup,
    *,
    group: str | None = None,
    metrics: SuperviseMetrics | None = None,
    task_status: TaskStatus[Path] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on the unix datagram socket ``path``; every datagram sets ``wakeup``.

    The socket file is created with mode 0660 and, when ``group`` is given, handed to that
    group so Pacemaker's alert agents (run as hacluster:haclient) can write to it. A stale
    socket file left by a crashed supervise is replaced. Readiness: after the bind.

    Raises:
        NudgeSocketError: the directory is missing or the group does not exist.

    Cancellation:
        Closes the socket and removes its file (unless another process replaced it).
    """
    gid = _group_id(path, group)
    apath = anyio.Path(path)
    if not await apath.parent.is_dir():
        raise NudgeSocketError(path, f"directory {path.parent} does not exist")
    try:
        # Binding touches the file system (unlink a stale socket, bind, chmod, chown): do it
        # off the event loop.
        raw = await anyio.to_thread.run_sync(_bind, path, gid)
    except OSError as exc:
        raise NudgeSocketError(path, str(exc)) from exc
    try:
        sock = await anyio.abc.UNIXDatagramSocket.from_socket(raw)
    except BaseException:
        raw.close()
        raise
    inode = (await apath.stat()).st_ino
    try:
        log.info("nudge.listen", path=str(path), group=group)
        task_status.started(path)
        async with sock:
            while True:
                data, _ = await sock.receive()
                # The agent's datagram names the operation ("task=promote ..."); the
                # payload carries no authority, it only decides how eagerly to re-read.
                wakeup.set(promotion=b"task=promote" in data)
                if metrics is not None:
                    metrics.nudges.inc()
                log.debug(
                    "pacemaker.alert.nudge",
                    alert=data[:_MAX_DATAGRAM].decode("utf-8", "replace"),
                )
    finally:
        # A newer supervise may already have bound its own socket at the same path.
        with anyio.move_on_after(_CLEANUP_S, shield=True), contextlib.suppress(OSError):
            if (await apath.stat()).st_ino == inode:
                await apath.unlink()


def _bind(path: Path, gid: int | None) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()  # left by a crashed supervise
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(str(path))
        path.chmod(_SOCKET_MODE)
        if gid is not None:
            os.chown(path, -1, gid)
        sock.setblocking(False)  # noqa: FBT003 - the stdlib API takes a positional bool
    except BaseException:
        sock.close()
        raise
    return sock


def _group_id(path: Path, group: str | None) -> int | None:
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError as exc:
        raise NudgeSocketError(path, f"group {group!r} does not exist") from exc
