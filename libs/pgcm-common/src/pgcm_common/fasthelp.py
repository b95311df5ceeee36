"""A command's plain ``--help`` and ``--version`` without building its parser.

Building the parser imports the settings models (pydantic) and, through them, the etcd
client: about a second on a small host, for a page that only changes with the code. The
Debian packages render each command's top-level ``--help`` at build time into
``<venv>/share/pgcm-help/<prog>.txt``; the console script's entry prints that file for a
bare ``--help``/``-h`` and imports nothing else. Every other invocation (and a venv
without the file, e.g. the development workspace) builds the parser as usual. The help
is always rendered at :data:`HELP_WIDTH` columns, so the cached page and the live one
are the same text whatever the terminal (tests/deb compares them).

A bare ``--version`` is answered the same way, from the installed distribution's
metadata (:func:`print_fast_version`): the parser would print the same line, but only
after importing everything its settings models import.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

__all__ = [
    "HELP_WIDTH",
    "help_file",
    "help_formatter",
    "installed_version",
    "print_cached_help",
    "print_fast_version",
]

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


def installed_version(prog: str, site: Path | None = None) -> str | None:
    """Return the ``Version:`` of ``prog``'s dist-info in ``site``, or None when not there.

    ``site`` defaults to the directory pgcm_common is installed in: in a service's venv,
    where every wheel shares one site-packages, the service's dist-info lies beside it.
    Reading its METADATA headers takes a file read; ``importlib.metadata`` would import
    the email and zipfile packages first (most of a bare ``--version``'s time).
    """
    here = Path(__file__).resolve().parents[1] if site is None else site
    found = list(here.glob(f"{prog.replace('-', '_')}-*.dist-info/METADATA"))
    if len(found) != 1:
        return None
    with found[0].open(encoding="utf-8") as metadata:
        for line in metadata:
            if not line.strip():  # the headers end at the first empty line
                break
            name, _, value = line.partition(":")
            if name == "Version":
                return value.strip()
    return None


def print_fast_version(prog: str, argv: Sequence[str]) -> bool:
    """Print ``<prog> <version>`` when ``argv`` asks only for it; return whether it did.

    The line is the one ``--version`` prints through the parser
    (:mod:`pgcm_common.version`): ``prog`` is also the distribution's name. Where the
    dist-info is not beside pgcm_common (an editable install), ``importlib.metadata``
    finds it.
    """
    if list(argv) != ["--version"]:
        return False
    found = installed_version(prog)
    if found is None:
        from pgcm_common.version import distribution_version  # noqa: PLC0415 - the slow way

        found = distribution_version(prog)
    sys.stdout.write(f"{prog} {found}\n")
    return True
