"""``--version`` for every pgcm command: the installed distribution's version."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

__all__ = ["add_version_argument", "distribution_version"]


def distribution_version(distribution: str) -> str:
    """Return ``distribution``'s installed version, or ``unknown`` when not installed."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


class _VersionAction(argparse.Action):
    """Print ``<prog> <version>`` and exit 0; the version is read only when asked for."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        *,
        distribution: str,
        help: str,  # noqa: A002 - argparse's keyword
    ) -> None:
        self.distribution = distribution
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,  # noqa: ARG002 - argparse's Action signature
        values: object,  # noqa: ARG002
        option_string: str | None = None,  # noqa: ARG002
    ) -> NoReturn:
        sys.stdout.write(f"{parser.prog} {distribution_version(self.distribution)}\n")
        parser.exit()


def add_version_argument(parser: argparse.ArgumentParser, distribution: str) -> None:
    """Add ``--version`` to ``parser``, reporting ``distribution``'s version."""
    parser.add_argument(
        "--version",
        action=_VersionAction,
        distribution=distribution,
        help="print the version and exit",
    )
