"""Show a value that came from outside (a gRPC caller, etcd) without trusting its size.

A client-supplied string may be megabytes long or hold control characters. Echoed
whole into an error message it ends in gRPC trailers, whose HPACK Huffman encoding in
pure Python takes time quadratic in the length (a 1 MB value kept the server busy for
minutes); echoed into a log line it floods the journal or forges lines. Every place
that repeats such a value uses :func:`excerpt`.
"""

from __future__ import annotations

from typing import Final

__all__ = ["EXCERPT_CHARS", "excerpt"]

EXCERPT_CHARS: Final = 32


def excerpt(value: str | bytes, limit: int = EXCERPT_CHARS) -> str:
    """Return a short, printable, quoted prefix of ``value`` for messages and logs.

    At most ``limit`` characters (or bytes) of the value are shown, escaped as by
    :func:`repr` (bytes keep their ``b''`` form); a longer value is marked with its full
    length, e.g. ``'nnnnnnnn'... (1000000 chars)``.
    """
    unit = "bytes" if isinstance(value, bytes) else "chars"
    shown = repr(value[:limit])
    return f"{shown}... ({len(value)} {unit})" if len(value) > limit else shown
