"""benchmarks/original.py: which checkout, which cache, which Go environment."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "original.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_original_build", _PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


original = _load()


def _checkout(root: Path) -> Path:
    (root / "cmd" / "pgcm").mkdir(parents=True)
    (root / "vendor").mkdir()
    return root


@pytest.mark.parametrize("value", [None, "", "   "])
def test_unset_source_says_which_variable_and_how_to_get_a_checkout(value: str | None) -> None:
    environ = {} if value is None else {"PGCM_BENCH_ORIGINAL_SRC": value}
    with pytest.raises(original.OriginalUnavailable) as caught:
        original.source_dir(environ)
    assert "PGCM_BENCH_ORIGINAL_SRC is not set" in str(caught.value)
    assert "git clone https://github.com/gocardless/pgsql-cluster-manager" in str(caught.value)


def test_a_source_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(original.OriginalUnavailable, match="is not a directory"):
        original.source_dir({"PGCM_BENCH_ORIGINAL_SRC": str(missing)})


def test_a_directory_without_the_originals_layout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cmd" / "pgcm").mkdir(parents=True)  # no vendor/
    with pytest.raises(original.OriginalUnavailable, match="not the original's tree"):
        original.source_dir({"PGCM_BENCH_ORIGINAL_SRC": str(tmp_path)})


def test_a_checkout_is_accepted_with_surrounding_spaces(tmp_path: Path) -> None:
    root = _checkout(tmp_path / "src")
    assert original.source_dir({"PGCM_BENCH_ORIGINAL_SRC": f" {root} "}) == root


def test_cache_defaults_to_var_tmp_and_follows_its_variable(tmp_path: Path) -> None:
    assert original.cache_dir({}) == Path("/var/tmp/pgcm-bench-original")
    assert original.cache_dir({"PGCM_BENCH_ORIGINAL_CACHE": str(tmp_path)}) == tmp_path


def test_go_builds_in_gopath_mode_offline_inside_the_cache(tmp_path: Path) -> None:
    env = original.go_env(tmp_path, {"PATH": "/usr/bin", "GO111MODULE": "on", "GOFLAGS": "-x"})
    assert env["PATH"] == "/usr/bin"
    assert env["GOPATH"] == str(tmp_path / "gopath")
    assert env["GOCACHE"] == str(tmp_path / "gocache")
    assert (env["GO111MODULE"], env["GOFLAGS"], env["GOPROXY"]) == ("off", "", "off")


def test_binaries_are_named_by_revision_or_rebuilt_without_one() -> None:
    assert original.binary_name("24e16d76") == "pgcm-24e16d76"
    assert original.binary_name(None) == "pgcm-worktree"


def test_build_without_go_on_path_says_how_to_install_it(tmp_path: Path) -> None:
    root = _checkout(tmp_path / "src")
    environ = {"PGCM_BENCH_ORIGINAL_SRC": str(root), "PATH": str(tmp_path / "empty")}
    with pytest.raises(original.OriginalUnavailable, match="no Go toolchain"):
        original.build(environ)
