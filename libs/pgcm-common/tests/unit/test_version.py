from __future__ import annotations

import argparse

import pytest

from pgcm_common.version import add_version_argument, distribution_version


def test_an_unknown_distribution_reports_unknown() -> None:
    assert distribution_version("pgcm-no-such-distribution") == "unknown"


def test_version_is_printed_on_stdout_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="tool")
    add_version_argument(parser, "pgcm-common")
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr()
    assert out.out.startswith("tool 0.")
    assert out.err == ""


def test_without_version_nothing_is_added_to_the_namespace() -> None:
    parser = argparse.ArgumentParser(prog="tool")
    add_version_argument(parser, "pgcm-common")
    assert vars(parser.parse_args([])) == {}
