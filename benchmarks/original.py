"""Build the original pgsql-cluster-manager's ``pgcm`` binary from a checkout.

The original (gocardless/pgsql-cluster-manager, Go) is never part of this repository:
``bench_original`` takes a checkout's path from ``PGCM_BENCH_ORIGINAL_SRC`` (a plain
``git clone https://github.com/gocardless/pgsql-cluster-manager``) and builds it here.
It vendors every dependency and predates Go modules, so it builds offline in GOPATH
mode: the tree is copied to ``<cache>/gopath/src/github.com/gocardless/
pgsql-cluster-manager`` and ``go build ./cmd/pgcm`` runs there with
``GO111MODULE=off`` and ``GOPROXY=off``. The binary is cached per git revision
(``<cache>/bin/pgcm-<revision>``); a checkout without git metadata is rebuilt each time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

__all__ = [
    "CACHE_ENV",
    "SOURCE_ENV",
    "OriginalUnavailable",
    "build",
    "cache_dir",
    "go_env",
    "source_dir",
]

SOURCE_ENV: Final = "PGCM_BENCH_ORIGINAL_SRC"
CACHE_ENV: Final = "PGCM_BENCH_ORIGINAL_CACHE"
_DEFAULT_CACHE: Final = Path("/var/tmp/pgcm-bench-original")  # noqa: S108  # kept across runs
IMPORT_PATH: Final = "github.com/gocardless/pgsql-cluster-manager"
_HOW: Final = (
    f"set {SOURCE_ENV} to a checkout of the original "
    "(git clone https://github.com/gocardless/pgsql-cluster-manager)"
)


class OriginalUnavailable(Exception):  # a reason to skip, not a failure
    """The original cannot be built here; the message says why and what to do."""


@final
@dataclass(frozen=True, slots=True)
class Built:
    """A built binary and the revision it was built from (``None``: no git metadata)."""

    binary: Path
    revision: str | None


def source_dir(environ: Mapping[str, str]) -> Path:
    """The checkout named by ``PGCM_BENCH_ORIGINAL_SRC``.

    Raises:
        OriginalUnavailable: unset, empty, not a directory, or not the original's tree.
    """
    raw = environ.get(SOURCE_ENV, "").strip()
    if not raw:
        raise OriginalUnavailable(f"{SOURCE_ENV} is not set: {_HOW}")
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise OriginalUnavailable(f"{SOURCE_ENV}={raw} is not a directory: {_HOW}")
    if not (path / "cmd" / "pgcm").is_dir() or not (path / "vendor").is_dir():
        raise OriginalUnavailable(
            f"{SOURCE_ENV}={raw} has no cmd/pgcm and vendor/: not the original's tree"
        )
    return path


def cache_dir(environ: Mapping[str, str]) -> Path:
    """Where builds go: ``PGCM_BENCH_ORIGINAL_CACHE`` or ``/var/tmp/pgcm-bench-original``."""
    raw = environ.get(CACHE_ENV, "").strip()
    return Path(raw).expanduser() if raw else _DEFAULT_CACHE


def go_env(cache: Path, base: Mapping[str, str]) -> dict[str, str]:
    """The environment of the build: GOPATH mode, offline, the cache's own GOPATH."""
    env = dict(base)
    env.update(
        {
            "GOPATH": str(cache / "gopath"),
            "GOCACHE": str(cache / "gocache"),
            "GO111MODULE": "off",
            "GOFLAGS": "",
            "GOPROXY": "off",
            "CGO_ENABLED": "0",
        }
    )
    return env


def binary_name(revision: str | None) -> str:
    """``pgcm-<revision>`` (``pgcm-worktree`` when the checkout has no git metadata)."""
    return f"pgcm-{revision}" if revision else "pgcm-worktree"


def _revision(source: Path) -> str | None:
    if not (source / ".git").exists():
        return None
    result = subprocess.run(
        ["git", "-C", str(source), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def build(environ: Mapping[str, str] | None = None) -> Built:
    """Build (or reuse) the original's binary; return it.

    Raises:
        OriginalUnavailable: no checkout, no Go toolchain, or the build failed.
    """
    env = dict(os.environ if environ is None else environ)
    source = source_dir(env)
    cache = cache_dir(env)
    go = shutil.which("go", path=env.get("PATH"))
    if go is None:
        raise OriginalUnavailable("no Go toolchain on PATH (Debian: apt-get install golang-go)")
    revision = _revision(source)
    binary = cache / "bin" / binary_name(revision)
    if revision is not None and binary.exists():
        return Built(binary, revision)
    tree = cache / "gopath" / "src" / IMPORT_PATH
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(source, tree, ignore=shutil.ignore_patterns(".git"), symlinks=True)
    binary.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [go, "build", "-o", str(binary), "./cmd/pgcm"],
        cwd=tree,
        env=go_env(cache, env),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise OriginalUnavailable(f"go build of the original failed: {result.stderr[-2000:]}")
    return Built(binary, revision)
