"""The ``pgcm-supervise`` console script: bare ``--help``/``--version`` import no service code."""

from __future__ import annotations

import sys

from pgcm_common.fasthelp import print_cached_help, print_fast_version


def main() -> int:
    """Print the packaged help page or the version, or run the command line."""
    prog, argv = "pgcm-supervise", sys.argv[1:]
    if print_cached_help(prog, argv) or print_fast_version(prog, argv):
        return 0
    from pgcm_supervise.cli import main as run_cli  # noqa: PLC0415 - only past the fast path

    return run_cli()
