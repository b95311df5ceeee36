"""Process lifecycle: run until SIGTERM/SIGINT, then unwind cleanly.

:func:`run_until_signalled` runs a service's ``main`` under ``anyio.run`` (asyncio
backend: grpclib needs it) beside a signal watcher. The first SIGTERM or SIGINT logs
``shutdown.start`` and cancels the root scope, so every task unwinds through its
shielded cleanup and the process exits 0. The watcher then closes its receiver, so the
default disposition is back: a second signal kills the process at once (rc 143 for
SIGTERM) when cleanup hangs.

:func:`sd_notify` speaks systemd's notify protocol (``READY=1``, ``WATCHDOG=1``,
``STOPPING=1``) over the ``$NOTIFY_SOCKET`` datagram socket; it does nothing outside
systemd.

:func:`settle_memory` is for a daemon that has finished starting: it freezes the
start-up objects out of the garbage collector's sight and hands freed memory back to
the operating system.
"""

from __future__ import annotations

import contextlib
import functools
import gc
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
    "settle_memory",
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


def settle_memory() -> None:
    """Collect start-up garbage, freeze what survives, return free heap pages to the OS.

    Call once, when start-up is over (a daemon's first successful cycle). It blocks for
    one full garbage collection (tens of milliseconds, up to ~200 ms on a busy 2-core
    VM), which is why it runs once and not on a hot path.

    * ``gc.freeze()`` moves every object alive now (modules, classes, pydantic and
      protobuf schemas: hundreds of thousands) into the permanent generation, so later
      full collections no longer walk them. Without it a full collection costs as much
      as the collect here, at a random moment, for instance between an etcd event and
      the pgbouncer.ini write it triggers.
    * glibc keeps the memory freed by start-up (import machinery, schema building,
      settings parsing) in its heap; ``malloc_trim(0)`` gives the unused pages back.
      Measured on pgcm-proxy: about 3.5 MB less resident memory. Skipped where the C
      library has no ``malloc_trim`` (musl, macOS).
    """
    gc.collect()
    gc.freeze()
    # ctypes only here: importing it costs ~0.3 MB, so a daemon that never settles
    # does not pay for it.
    import ctypes  # noqa: PLC0415

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
