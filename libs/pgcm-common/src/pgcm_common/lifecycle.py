"""Process lifecycle: run until SIGTERM/SIGINT, then unwind cleanly (STYLE C7).

:func:`run_until_signalled` runs a service's ``main`` under ``anyio.run`` (asyncio
backend: grpclib needs it) beside a signal watcher. The first SIGTERM or SIGINT logs
``shutdown.start`` and cancels the root scope, so every task unwinds through its
shielded cleanup and the process exits 0. The watcher then closes its receiver, so the
default disposition is back: a second signal kills the process at once (rc 143 for
SIGTERM) when cleanup hangs.

:func:`sd_notify` speaks systemd's notify protocol (``READY=1``, ``WATCHDOG=1``,
``STOPPING=1``) over the ``$NOTIFY_SOCKET`` datagram socket; it does nothing outside
systemd.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import TypeVarTuple, Unpack

import anyio
import structlog

__all__ = [
    "SHUTDOWN_SIGNALS",
    "cancel_on_signal",
    "run_until_signalled",
    "sd_notify",
    "systemd_watchdog",
]

log = structlog.get_logger("pgcm.lifecycle")

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
Ts = TypeVarTuple("Ts")


async def cancel_on_signal(
    scope: anyio.CancelScope,
    *,
    received: list[signal.Signals] | None = None,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Cancel ``scope`` on the first SIGTERM/SIGINT, then stop listening.

    Cancellation:
        Returns after the first signal; leaving the receiver restores the default
        disposition, so a second signal terminates the process.
    """
    with anyio.open_signal_receiver(*SHUTDOWN_SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            log.info(
                "shutdown.start",
                signal=signal.Signals(signum).name,
                msg="received signal, shutting down",
            )
            if received is not None:
                received.append(signal.Signals(signum))
            scope.cancel()
            return


async def _supervise(
    received: list[signal.Signals], main: Callable[[Unpack[Ts]], Awaitable[object]], *args: *Ts
) -> None:
    async with anyio.create_task_group() as tg:
        await tg.start(functools.partial(cancel_on_signal, tg.cancel_scope, received=received))
        await main(*args)
        # main returned by itself: stop listening for signals too.
        tg.cancel_scope.cancel()


def run_until_signalled(main: Callable[[Unpack[Ts]], Awaitable[object]], *args: *Ts) -> bool:
    """Run ``main(*args)`` until it returns or the first SIGTERM/SIGINT arrives.

    A signal cancels ``main``; once it has unwound this function returns True so the
    caller can exit 0. It returns False when ``main`` ended without a signal: a daemon
    must treat that as a failure (a loop ended that should run forever). Exceptions
    from ``main`` propagate (an ExceptionGroup with one member is unwrapped to it).
    """
    received: list[signal.Signals] = []
    try:
        anyio.run(_supervise, received, main, *args, backend="asyncio")
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    return bool(received)


def sd_notify(state: str | Mapping[str, str], *, environ: Mapping[str, str] | None = None) -> bool:
    """Send a systemd notification such as ``"READY=1"``; return whether one was sent.

    Args:
        state: the raw message (``"READY=1"``) or a mapping of assignments.
        environ: where to look up ``NOTIFY_SOCKET``; :data:`os.environ` by default.

    Sending is a single non-blocking datagram, so it is safe to call from async code.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    message = state if isinstance(state, str) else "\n".join(f"{k}={v}" for k, v in state.items())
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.setblocking(False)  # noqa: FBT003 - the stdlib API takes a positional bool
        sock.sendto(message.encode(), address)
    return True


def systemd_watchdog(environ: Mapping[str, str], pid: int) -> timedelta | None:
    """Return systemd's watchdog timeout for process ``pid``, or None when it is off.

    systemd sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID`` naming the process it expects
    pings from); pings should come at least twice per timeout.
    """
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (owner and owner != str(pid)):
        return None
    return timedelta(microseconds=int(usec))
