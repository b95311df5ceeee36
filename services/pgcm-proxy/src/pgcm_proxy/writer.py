"""Write pgbouncer.ini atomically, keeping its mode and owner, only when it changes."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiofiles.os

__all__ = ["write_if_changed"]

_DEFAULT_MODE = 0o644


async def write_if_changed(path: Path, content: str) -> bool:
    """Replace ``path`` with ``content`` atomically; return False when it already matches.

    The new text goes to a temporary file in the same directory (a rename is atomic
    only within one filesystem), is flushed and fsynced, gets the old file's mode and
    owner, and is renamed over the old file; then the directory is fsynced so the
    rename survives a crash. PgBouncer therefore reads either the old or the new file,
    never a torn one. The steps run as one call on aiofiles' worker thread: each
    hand-over to a thread costs about as much as the fsync itself, and the proxy's
    latency from etcd put to rewritten file is a promise (see benchmarks/).

    Raises:
        OSError: the directory is not writable or the disk is full; ``path`` is untouched.

    Cancellation:
        The worker thread finishes the write (or its clean-up) even when the caller is
        cancelled; ``path`` is then either the old or the new file, and the temporary
        file is removed on failure.
    """
    replace: Callable[[Path, bytes], Awaitable[bool]] = aiofiles.os.wrap(_replace_if_changed)
    return await replace(path, content.encode())


def _replace_if_changed(path: Path, data: bytes) -> bool:
    try:
        with path.open("rb") as current:
            if current.read() == data:
                return False
            old = os.fstat(current.fileno())
        mode, owner = stat.S_IMODE(old.st_mode), (old.st_uid, old.st_gid)
    except FileNotFoundError:
        mode, owner = _DEFAULT_MODE, None
    # A unique name per attempt: a superseded attempt's worker thread cannot be stopped
    # and may still be writing its own temporary file when the next attempt starts.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".pgcm-tmp")
    temporary = Path(name)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)  # the umask may have narrowed the mode given to open()
            if owner is not None:
                os.fchown(fd, *owner)
            os.fsync(fd)
        finally:
            os.close(fd)
        temporary.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    _fsync_directory(path.parent)
    return True


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
