from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pgcm_common.fasthelp import HELP_WIDTH, help_file, help_formatter, print_cached_help


def _page(prefix: Path, text: str) -> None:
    page = help_file("pgcm-x", str(prefix))
    page.parent.mkdir(parents=True)
    page.write_text(text)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_a_bare_help_prints_the_rendered_page(
    tmp_path: Path, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _page(tmp_path, "usage: pgcm-x\n")
    assert print_cached_help("pgcm-x", [flag], str(tmp_path))
    assert capsys.readouterr().out == "usage: pgcm-x\n"


@pytest.mark.parametrize("argv", [[], ["run", "--help"], ["--help", "--json"], ["--version"]])
def test_anything_else_goes_to_the_real_parser(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    _page(tmp_path, "usage: pgcm-x\n")
    assert not print_cached_help("pgcm-x", argv, str(tmp_path))
    assert capsys.readouterr().out == ""


def test_without_a_rendered_page_the_real_parser_runs(tmp_path: Path) -> None:
    assert not print_cached_help("pgcm-x", ["--help"], str(tmp_path))


def test_help_is_wrapped_at_a_fixed_width_whatever_the_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    parser = argparse.ArgumentParser(prog="pgcm-x", formatter_class=help_formatter)
    parser.add_argument("--option", help="word " * 60)
    lines = parser.format_help().splitlines()
    assert max(len(line) for line in lines) <= HELP_WIDTH
    assert max(len(line) for line in lines) > HELP_WIDTH - 10  # wrapped near the width
