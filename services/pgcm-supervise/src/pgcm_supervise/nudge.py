"""Fast detection: the Pacemaker alert agent nudges supervise over a unix datagram socket.

Polling ``crm_mon`` every 500 ms bounds how late a promotion is seen; the alert agent
(``deploy/pacemaker/pgcm-alert-agent``) runs on every node as soon as Pacemaker promotes,
demotes, starts or stops the PostgreSQL resource and sends one datagram to
:func:`serve_nudges`, which sets a :class:`Wakeup` so the publisher re-reads at once.

The datagram's content decides only how eagerly supervise reads, and one thing more: a
successful promote it reports (``task=promote ... node=<n> rc=0``) lets the publisher
publish ``<n>`` before its next crm_mon read returns, but only when the crm_mon view it
read just before, with quorum, already showed ``<n>`` promoting and no other instance
promoted or demoting (:func:`pgcm_supervise.publisher.decide_promoted`). Whoever can
write to the socket (the ``haclient`` group) can already move the primary with
``crm_resource``; a forged datagram can at most publish, a crm_mon read early, the
primary Pacemaker was promoting, and the next read corrects etcd either way.
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

__all__ = ["NudgeSocketError", "Wakeup", "promoted_node", "serve_nudges"]

log = structlog.get_logger("pgcm.supervise.nudge")

_MAX_DATAGRAM = 1024
_MAX_NODE_NAME = 255
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
        self._promoted: str | None = None
        self._promoted_event = anyio.Event()
        self.count = 0

    def set(self, *, promotion: bool = False, promoted: str | None = None) -> None:
        """Wake the waiter now, or make its next wait return at once.

        Args:
            promotion: the nudge reports a promote (see :meth:`take_promotion`).
            promoted: the node a successful promote was reported for (see
                :meth:`take_promoted`); implies ``promotion``.
        """
        self.count += 1
        self._promotion = self._promotion or promotion or promoted is not None
        if promoted is not None:
            self._promoted = promoted
            self._promoted_event.set()
        self._event.set()

    def take_promoted(self) -> str | None:
        """Return the node last reported promoted since the last call, and forget it."""
        promoted, self._promoted = self._promoted, None
        return promoted

    async def wait_promoted(self) -> str:
        """Wait for a reported promote (one already reported returns at once); take it.

        Independent of :meth:`wait`: a waiter here sees the notice while the publisher
        is still busy with a read.

        Cancellation:
            Nothing to clean up.
        """
        while True:
            await self._promoted_event.wait()
            self._promoted_event = anyio.Event()
            promoted = self.take_promoted()
            if promoted is not None:
                return promoted

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
                # The agent's datagram names the operation ("task=promote ..."); what
                # it may decide is in this module's docstring.
                wakeup.set(promotion=b"task=promote" in data, promoted=promoted_node(data))
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


def promoted_node(datagram: bytes) -> str | None:
    """The node a datagram reports successfully promoted, else None.

    The alert agent sends ``task=<task> rsc=<resource> node=<node> rc=<rc>`` (printable
    ASCII, at most 400 characters); only ``task=promote`` with ``rc=0`` and a node name
    of at most 255 printable characters counts. Anything else, malformed or not, is
    None: the datagram then only wakes the publisher.
    """
    fields: dict[str, str] = {}
    for part in datagram[:_MAX_DATAGRAM].decode("ascii", "replace").split():
        key, sep, value = part.partition("=")
        if sep and key not in fields:
            fields[key] = value
    node = fields.get("node", "")
    if fields.get("task") != "promote" or fields.get("rc") != "0":
        return None
    if not node or len(node) > _MAX_NODE_NAME or not node.isprintable() or "\ufffd" in node:
        return None
    return node


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
