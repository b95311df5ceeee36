"""The ``pgcm-failover`` console script: a bare ``--help`` without importing the service."""

from __future__ import annotations

import sys

from pgcm_common.fasthelp import print_cached_help


def main() -> int:
    """Print the packaged help page, or run the command line."""
    if print_cached_help("pgcm-failover", sys.argv[1:]):
        return 0
    from pgcm_failover.cli import main as run_cli  # noqa: PLC0415 - only past the fast path

    return run_cli()
