"""Write pgbouncer.ini atomically, keeping its mode and owner, only when it changes.

Two steps, so that the slow one stays off the latency that matters:

1. :func:`replace_if_changed` writes a temporary file in the same directory and renames
   it over the old one. From the rename on, PgBouncer (which reads the file on RELOAD)
   sees the whole new file; before it, the whole old one; never a torn one.
2. :func:`sync_to_disk` fsyncs the file and its directory, so the new file survives a
   power loss. On this VM one fsync takes 0.5 ms typically and 5-10 ms at p99 (more
   when another process writes to the disk), which alone is more than the proxy's
   whole latency budget from etcd put to rewritten file (benchmarks/bench_proxy.py).

Why fsyncing after the rename (not before it, the textbook order) is safe here: the
file's content is derived state, never the only copy. The proxy's caller runs step 2
concurrently with the RELOAD and acknowledges the new primary only after both, so an
acknowledged config is durable. A power loss in the few milliseconds between the
rename and the fsync can at worst (on filesystems without ext4's replace-on-rename
flush, ``auto_da_alloc``) leave an empty or partial file behind; a fresh start of the
proxy re-renders the file from etcd, finds the content different, rewrites it and
RELOADs PgBouncer (and SHOW DATABASES is re-checked every ``poll_interval``).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiofiles.os

__all__ = ["replace_if_changed", "sync_to_disk", "write_if_changed"]

_DEFAULT_MODE = 0o644


async def replace_if_changed(path: Path, content: str) -> bool:
    """Replace ``path`` with ``content`` atomically; return False when it already matches.

    The new text goes to a temporary file in the same directory (a rename is atomic
    only within one filesystem), gets the old file's mode and owner, and is renamed over
    the old file. The steps run as one call on aiofiles' worker thread: each hand-over
    to a thread costs a good part of the latency budget. Not yet durable: follow with
    :func:`sync_to_disk` (see the module docstring).

    Raises:
        OSError: the directory is not writable or the disk is full; ``path`` is untouched.

    Cancellation:
        The worker thread finishes the write (or its clean-up) even when the caller is
        cancelled; ``path`` is then either the old or the new file, and the temporary
        file is removed on failure.
    """
    replace: Callable[[Path, bytes], Awaitable[bool]] = aiofiles.os.wrap(_replace_if_changed)
    return await replace(path, content.encode())


async def sync_to_disk(path: Path) -> None:
    """Flush ``path`` and its directory entry to disk (fsync of the file, then the directory).

    Whatever file ``path`` names now is flushed: when a newer write replaced it
    meanwhile, that newer file is the one that has to survive.

    Raises:
        OSError: the disk reported an error (or ``path`` vanished); the caller retries.
    """
    sync: Callable[[Path], Awaitable[None]] = aiofiles.os.wrap(_sync_to_disk)
    await sync(path)


async def write_if_changed(path: Path, content: str) -> bool:
    """Replace ``path`` atomically and durably; return False when it already matches.

    :func:`replace_if_changed` followed by :func:`sync_to_disk` when the file changed.

    Raises:
        OSError: the write or the fsync failed.
    """
    changed = await replace_if_changed(path, content)
    if changed:
        await sync_to_disk(path)
    return changed


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
        finally:
            os.close(fd)
        temporary.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    return True


def _sync_to_disk(path: Path) -> None:
    for target, flags in ((path, os.O_RDONLY), (path.parent, os.O_RDONLY | os.O_DIRECTORY)):
        fd = os.open(target, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
