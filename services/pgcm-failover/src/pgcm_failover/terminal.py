"""Make text from etcd and from peers safe to show on the operator's terminal.

Proxy ids, hosts, node names and error messages come from etcd records and remote
answers that anyone with write access to etcd controls. Written raw to a terminal, an
ESC sequence in them could retitle the window, hide lines or rewrite what the operator
reads, and a bidi override could make ``n1`` read as ``1n``. Every human output of
pgcm-failover passes each line through :func:`printable` as it is rendered; ``--json``
output is left alone (JSON escapes control characters itself).
"""

from __future__ import annotations

__all__ = ["printable"]


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:  # noqa: PLR2004 - the one-byte range has the short \xNN form
        return f"\\x{code:02x}"
    if code < 0x10000:  # noqa: PLR2004 - the Basic Multilingual Plane has \uNNNN
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    r"""Return ``text`` with every character a terminal would not just print escaped.

    Escaped as ``\xNN``/``\uNNNN``: C0 controls (ESC, BEL, CR, LF, TAB, ...), DEL, C1
    controls (CSI ``\x9b`` among them), format characters such as the bidi overrides
    and isolates (U+202A-U+202E, U+2066-U+2069) and zero-width marks, line and
    paragraph separators, and unassigned or private code points: everything
    :meth:`str.isprintable` rejects except the plain space. Already escaped text is
    returned unchanged, so applying it twice is harmless.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)
