"""A command's plain ``--help`` from text rendered when its package was built.

Building the parser imports the settings models (pydantic) and, through them, the etcd
client: about a second on a small host, for a page that only changes with the code. The
Debian packages render each command's top-level ``--help`` at build time into
``<venv>/share/pgcm-help/<prog>.txt``; the console script's entry prints that file for a
bare ``--help``/``-h`` and imports nothing else. Every other invocation (and a venv
without the file, e.g. the development workspace) builds the parser as usual. The help
is always rendered at :data:`HELP_WIDTH` columns, so the cached page and the live one
are the same text whatever the terminal (tests/deb compares them).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

__all__ = ["HELP_WIDTH", "help_file", "help_formatter", "print_cached_help"]

HELP_WIDTH: Final = 80


def help_formatter(prog: str) -> argparse.HelpFormatter:
    """Return the help formatter every pgcm parser uses: raw descriptions, fixed width."""
    return argparse.RawDescriptionHelpFormatter(prog, width=HELP_WIDTH)


def help_file(prog: str, prefix: str | None = None) -> Path:
    """Return where ``prog``'s rendered help lives in the venv at ``prefix``."""
    return Path(sys.prefix if prefix is None else prefix) / "share" / "pgcm-help" / f"{prog}.txt"


def print_cached_help(prog: str, argv: Sequence[str], prefix: str | None = None) -> bool:
    """Print ``prog``'s rendered help when ``argv`` asks only for it; return whether it did."""
    if list(argv) not in (["--help"], ["-h"]):
        return False
    try:
        text = help_file(prog, prefix).read_text(encoding="utf-8")
    except OSError:
        return False
    sys.stdout.write(text)
    return True
