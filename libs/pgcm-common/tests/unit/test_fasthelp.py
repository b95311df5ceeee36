from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pgcm_common.fasthelp import (
    HELP_WIDTH,
    help_file,
    help_formatter,
    installed_version,
    print_cached_help,
    print_fast_version,
)


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


def test_a_bare_version_prints_the_distribution_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from importlib.metadata import version  # noqa: PLC0415

    assert print_fast_version("pgcm-common", ["--version"])
    assert capsys.readouterr().out == f"pgcm-common {version('pgcm-common')}\n"


def test_a_version_of_a_distribution_not_installed_is_unknown(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert print_fast_version("pgcm-x", ["--version"])
    assert capsys.readouterr().out == "pgcm-x unknown\n"


@pytest.mark.parametrize("argv", [[], ["--help"], ["--version", "run"], ["run", "--version"]])
def test_anything_but_a_bare_version_goes_to_the_real_parser(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert not print_fast_version("pgcm-common", argv)
    assert capsys.readouterr().out == ""


def _dist_info(site: Path, name: str, metadata: str) -> None:
    info = site / f"{name}-9.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(metadata)


def test_the_installed_version_is_read_from_the_dist_info_headers(tmp_path: Path) -> None:
    _dist_info(tmp_path, "pgcm_x", "Metadata-Version: 2.4\nName: pgcm-x\nVersion: 1.2.3\n\nText")
    _dist_info(tmp_path, "pgcm_xy", "Name: pgcm-xy\nVersion: 7\n")
    assert installed_version("pgcm-x", tmp_path) == "1.2.3"


@pytest.mark.parametrize(
    "metadata",
    ["Name: pgcm-x\n", "Name: pgcm-x\n\nVersion: 1.2.3\n"],  # none; only in the body
)
def test_no_version_header_is_no_installed_version(tmp_path: Path, metadata: str) -> None:
    _dist_info(tmp_path, "pgcm_x", metadata)
    assert installed_version("pgcm-x", tmp_path) is None


def test_no_dist_info_is_no_installed_version(tmp_path: Path) -> None:
    assert installed_version("pgcm-x", tmp_path) is None
