"""Write pgbouncer.ini atomically, keeping its mode and owner, only when it changes."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import aiofiles
import aiofiles.os

__all__ = ["write_if_changed"]

_DEFAULT_MODE = 0o644


async def write_if_changed(path: Path, content: str) -> bool:
    """Replace ``path`` with ``content`` atomically; return False when it already matches.

    The new text goes to a temporary file in the same directory (a rename is atomic
    only within one filesystem), is flushed and fsynced, gets the old file's mode and
    owner, and is renamed over the old file; then the directory is fsynced so the
    rename survives a crash. PgBouncer therefore reads either the old or the new file,
    never a torn one.

    Raises:
        OSError: the directory is not writable or the disk is full; ``path`` is untouched.

    Cancellation:
        Cancelling before the rename leaves ``path`` untouched and the temporary file
        removed; the rename itself is a single system call.
    """
    data = content.encode()
    try:
        async with aiofiles.open(path, "rb") as current:
            if await current.read() == data:
                return False
        old = await aiofiles.os.stat(path)
        mode, owner = stat.S_IMODE(old.st_mode), (old.st_uid, old.st_gid)
    except FileNotFoundError:
        mode, owner = _DEFAULT_MODE, None
    temporary = path.with_name(f".{path.name}.pgcm-{os.getpid()}.tmp")
    try:
        async with aiofiles.open(temporary, "wb") as handle:
            await handle.write(data)
            await handle.flush()
            await aiofiles.os.wrap(os.fsync)(handle.fileno())
        await aiofiles.os.wrap(os.chmod)(temporary, mode)
        if owner is not None:
            await aiofiles.os.wrap(os.chown)(temporary, *owner)
        await aiofiles.os.replace(temporary, path)
    except BaseException:
        await _remove_quietly(temporary)
        raise
    await _fsync_directory(path.parent)
    return True


async def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        await aiofiles.os.remove(path)


async def _fsync_directory(directory: Path) -> None:
    def sync() -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    await aiofiles.os.wrap(sync)()
