"""Write pgbouncer.ini atomically, keeping its mode and owner, only when it changes.

A file that does not exist yet is created with the mode it is given (the proxy passes
its template's mode), else 0640: pgbouncer.ini may hold passwords, and a process umask
is no guide to who may read them. An existing file keeps its mode and owner.

:class:`ConfigFile` splits a rewrite in two, so that the slow parts stay off the
latency that matters (etcd put to rewritten file, ``benchmarks/bench_proxy.py``):

1. :meth:`ConfigFile.replace_if_changed` writes the new text into a spare file in the
   same directory and swaps it with the old one in one atomic step
   (``renameat2(RENAME_EXCHANGE)``, or a plain rename where that is unsupported). From
   that step on, PgBouncer (which reads the file on RELOAD) sees the whole new file;
   before it, the whole old one; never a torn one.
2. :meth:`ConfigFile.sync_to_disk` fsyncs the file and its directory, so the new file
   survives a power loss, then removes the displaced old file and creates the spare
   for the next rewrite.

Measured on this VM's ext4 disk, per step (p50 / p99):

* creating a file: 0.4-1.2 / 0.8-2.5 ms (an inode allocation in the journal), hence
  the spare made in step 2; writing into it takes 0.03 / 0.1 ms;
* renaming over an existing file: 0.35 / 0.9-2.4 ms, because ext4 (mount option
  ``auto_da_alloc``, the default) allocates and starts writing the new file's blocks
  inside the rename; swapping the two names: 0.04 / 0.15 ms;
* fsync: 0.5 / 5-10 ms, more while another process writes to the disk.

Why fsyncing after the swap (not before it, the textbook order) is safe here: the
file's content is derived state, never the only copy. The proxy's caller runs step 2
concurrently with the RELOAD and acknowledges the new primary only after both, so an
acknowledged config is durable. A power loss in the few milliseconds between the swap
and the fsync can at worst leave an empty or partial file behind; a fresh start of the
proxy re-renders the file from etcd, finds the content different, rewrites it and
RELOADs PgBouncer (and SHOW DATABASES is re-checked every ``poll_interval``).

The spare is a hidden empty file named ``.<name>.<random>.pgcm-tmp`` beside the
config; :meth:`ConfigFile.close` removes it, and :meth:`ConfigFile.remove_leftovers`
removes those a killed proxy left behind.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import tempfile
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar, final

import aiofiles.os

from pgcm_proxy.exchange import exchange

__all__ = ["DEFAULT_NEW_FILE_MODE", "ConfigFile"]

DEFAULT_NEW_FILE_MODE = 0o640
_TEMPORARY_SUFFIX = ".pgcm-tmp"

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _in_thread(function: Callable[_P, _R]) -> Callable[_P, Awaitable[_R]]:
    """Run ``function`` on aiofiles' worker threads: file system calls can block."""
    wrapped: Callable[_P, Awaitable[_R]] = aiofiles.os.wrap(function)
    return wrapped


@final
@dataclass(frozen=True, slots=True)
class _Attributes:
    """What a replacement must keep of the file it replaces."""

    mode: int
    owner: tuple[int, int] | None  # None: the file is new, keep the process's own

    @classmethod
    def of(cls, status: os.stat_result) -> _Attributes:
        return cls(stat.S_IMODE(status.st_mode), (status.st_uid, status.st_gid))


@final
@dataclass(frozen=True, slots=True)
class _Spare:
    """An open, empty file beside the config, ready to take the next content."""

    fd: int
    path: Path
    attributes: _Attributes


@final
class ConfigFile:
    """One pgbouncer.ini, replaced atomically and durably (module docstring).

    The blocking work runs on aiofiles' worker threads. Rewrites are serialised: a
    superseded attempt's thread cannot be stopped, and the next attempt waits for it
    rather than racing it (the newer content always lands last).
    """

    def __init__(self, path: Path, *, new_file_mode: int = DEFAULT_NEW_FILE_MODE) -> None:
        """Manage ``path``; nothing is touched until the first call.

        Args:
            path: the config file.
            new_file_mode: permission bits of the file when this creates it.
        """
        self.path = path
        self._new_file = _Attributes(stat.S_IMODE(new_file_mode), None)
        self._replacing = threading.Lock()
        self._state = threading.Lock()  # guards _spare and _displaced
        self._spare: _Spare | None = None
        self._displaced: list[Path] = []

    async def replace_if_changed(self, content: str) -> bool:
        """Replace the file with ``content`` atomically; return False when it already matches.

        Not yet durable: follow with :meth:`sync_to_disk`.

        Raises:
            OSError: the directory is not writable or the disk is full; the file is
                untouched.

        Cancellation:
            The worker thread finishes the write (or its clean-up) even when the caller
            is cancelled; the file is then either the old or the new one.
        """
        return await _in_thread(self._replace_if_changed)(content.encode())

    async def sync_to_disk(self) -> None:
        """Flush the file and its directory entry to disk; prepare the next rewrite.

        Whatever file the path names now is flushed: when a newer write replaced it
        meanwhile, that newer file is the one that has to survive.

        Raises:
            OSError: the disk reported an error (or the file vanished); the caller
                retries. Failing to prepare the spare is not an error: the next
                rewrite then creates its file itself.
        """
        await _in_thread(self._sync_to_disk)()

    async def remove_leftovers(self) -> None:
        """Remove temporary files an earlier, killed process left beside the config."""
        await _in_thread(self._remove_leftovers)()

    async def close(self) -> None:
        """Remove the spare and any displaced old file."""
        await _in_thread(self._close)()

    def _replace_if_changed(self, data: bytes) -> bool:
        with self._replacing:
            try:
                current, status = _read_with_status(self.path)
            except FileNotFoundError:
                attributes = self._new_file
            else:
                if current == data:
                    return False
                attributes = _Attributes.of(status)
            spare = self._take_spare() or _new_spare(self.path, attributes)
            try:
                _fill(spare, data, attributes)
                if attributes.owner is not None and exchange(spare.path, self.path):
                    with self._state:
                        self._displaced.append(spare.path)  # now the old file's name
                else:
                    spare.path.replace(self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    spare.path.unlink()
                raise
            return True

    def _take_spare(self) -> _Spare | None:
        with self._state:
            spare, self._spare = self._spare, None
        return spare

    def _sync_to_disk(self) -> None:
        self._remove_displaced()
        # Created under the lock: a rewrite racing this (rare: a superseded apply's
        # sync) waits a moment for the spare instead of creating a second one.
        with contextlib.suppress(OSError), self._state:
            if self._spare is None:
                self._spare = _new_spare(self.path, self._current_attributes())
        # The fsyncs last: their journal commit then carries the two changes above too,
        # and the next swap does not find them in a commit that ext4 started meanwhile.
        for target, flags in (
            (self.path, os.O_RDONLY),
            (self.path.parent, os.O_RDONLY | os.O_DIRECTORY),
        ):
            fd = os.open(target, flags)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _current_attributes(self) -> _Attributes:
        try:
            return _Attributes.of(self.path.stat())
        except FileNotFoundError:
            return self._new_file

    def _remove_displaced(self) -> None:
        with self._state:
            displaced, self._displaced = self._displaced, []
        for path in displaced:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                with self._state:
                    self._displaced.append(path)  # tried again after the next rewrite

    def _remove_leftovers(self) -> None:
        with self._state:
            ours = None if self._spare is None else self._spare.path
        prefix = f".{self.path.name}."
        # Compared as text, not globbed: the config's name may hold glob characters.
        for path in self.path.parent.iterdir():
            name = path.name
            if name.startswith(prefix) and name.endswith(_TEMPORARY_SUFFIX) and path != ours:
                path.unlink(missing_ok=True)

    def _close(self) -> None:
        spare = self._take_spare()
        if spare is not None:
            os.close(spare.fd)
            spare.path.unlink(missing_ok=True)
        self._remove_displaced()


def _read_with_status(path: Path) -> tuple[bytes, os.stat_result]:
    """Return the file's content and status, with as few system calls as possible.

    Plain ``os`` calls rather than a buffered file object: on the path from etcd event
    to rewritten file, the object's set-up and its extra reads to find the end cost
    more than the reading.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        status = os.fstat(fd)
        content = os.read(fd, status.st_size + 1)
        if len(content) > status.st_size:  # it grew meanwhile: read to the end
            content += b"".join(iter(functools.partial(os.read, fd, 65536), b""))
        return content, status
    finally:
        os.close(fd)


def _new_spare(path: Path, attributes: _Attributes) -> _Spare:
    """Create an empty file beside ``path`` with ``attributes``, open for writing.

    Raises:
        OSError: the directory is not writable, or the owner cannot be given.
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMPORARY_SUFFIX)
    spare = _Spare(fd, Path(name), attributes)
    try:
        _set_attributes(fd, attributes)
    except BaseException:
        os.close(fd)
        spare.path.unlink(missing_ok=True)
        raise
    return spare


def _set_attributes(fd: int, attributes: _Attributes) -> None:
    os.fchmod(fd, attributes.mode)  # mkstemp creates 0600
    if attributes.owner is not None:
        os.fchown(fd, *attributes.owner)


def _fill(spare: _Spare, data: bytes, attributes: _Attributes) -> None:
    """Write ``data`` into the empty spare, give it ``attributes``, and close it."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(spare.fd, view) :]
        if attributes != spare.attributes:  # the config's mode or owner changed since
            _set_attributes(spare.fd, attributes)
    finally:
        os.close(spare.fd)
