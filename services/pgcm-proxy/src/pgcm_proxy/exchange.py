"""Swap two files' names in one atomic step: ``renameat2(RENAME_EXCHANGE)``.

Python 3.11 has no binding for it, so glibc's function (2.28+) is called through ctypes.
Where the C library, the kernel or the filesystem cannot swap, :func:`exchange` says so
and the caller renames instead.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["Renameat2", "exchange"]

_AT_FDCWD = -100  # <fcntl.h>: paths relative to the current directory
_RENAME_EXCHANGE = 2  # <linux/fs.h>
# Where the swap cannot be done, a plain rename does the same job a little slower: the
# filesystem refuses the flag (EINVAL), the kernel lacks the call (ENOSYS), or one of
# the files vanished meanwhile (ENOENT).
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOENT})

Renameat2 = Callable[[int, bytes, int, bytes, int], int]


def _load_renameat2() -> Renameat2 | None:
    """Return glibc's ``renameat2``, or None where the C library has none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = (
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    )
    function.restype = ctypes.c_int
    renameat2: Renameat2 = function
    return renameat2


_renameat2 = _load_renameat2()


def exchange(first: Path, second: Path) -> bool:
    """Swap the files named ``first`` and ``second`` atomically; False where unsupported.

    Both must exist. Blocking (a system call): run it off the event loop.

    Raises:
        OSError: the swap failed for another reason (permissions, I/O error).
    """
    if _renameat2 is None:
        return False
    if (
        _renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
        == 0
    ):
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(second))
