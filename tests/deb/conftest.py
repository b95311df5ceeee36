"""A clean Debian 12 root to install the built packages into, and the packages.

The root is a ``debootstrap --variant=minbase bookworm`` tree with the Debian packages
the .debs depend on, made once and kept in ``/var/cache/pgcm/debroot`` (creating it is
the only step that needs Debian's archive; about three minutes). Every test module gets
a fresh copy-on-write view of it: an overlay whose upper layer lives in the test's
temporary directory. Each command runs in new mount and network namespaces (``unshare
--mount --net``): the overlay, ``/proc`` and ``/dev`` are mounted there and vanish with
the command, also when a test fails, and dpkg runs with no network at all, which proves
the packages install offline.

The .debs come from ``PGCM_DEBS`` (a directory, as the ``deb`` nox session builds them)
or are built into the session's temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

import pytest

ROOT: Final = Path(__file__).resolve().parents[2]
CACHE: Final = Path(os.environ.get("PGCM_DEBROOT_CACHE", "/var/cache/pgcm/debroot"))
# What the packages depend on, preinstalled: dpkg -i then needs no archive.
BASE_PACKAGES: Final = ("python3", "pgbouncer", "pacemaker-cli-utils", "adduser", "systemd")
_COMMAND_TIMEOUT_S: Final = 300


def _unsupported_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: chroot, overlay mounts and namespaces"
    for tool in ("debootstrap", "unshare", "dpkg-deb"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/install-deps)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip this directory's tests, with the reason, where a Debian root cannot be used."""
    reason = _unsupported_reason()
    if reason is None:
        return
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.skip(reason=reason))


def base_root() -> Path:
    """Return the cached Debian 12 root, debootstrapping it first when missing."""
    key = "bookworm-" + "-".join(BASE_PACKAGES)
    root = CACHE / key
    if (root / ".pgcm-complete").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = CACHE / f"{key}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
             "bookworm", str(partial)],
            check=True, capture_output=True, timeout=1800,
        )  # fmt: skip
        (partial / ".pgcm-complete").write_text("debootstrap finished\n")
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return root


@final
@dataclass(frozen=True, slots=True)
class DebianRoot:
    """A copy-on-write Debian root; ``run`` executes a shell command chrooted in it."""

    lower: Path
    base: Path  # upper/work/mnt live here
    debs: Path  # bind-mounted at /debs

    @property
    def upper(self) -> Path:
        """Return the overlay's upper layer: everything the tests changed."""
        return self.base / "upper"

    def run(
        self, script: str, *, check: bool = True, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with ``sh -e`` inside the root; no network; mounts vanish after."""
        mnt = self.base / "mnt"
        setup = (
            "set -e\n"
            f"mount -t overlay pgcm-debroot -o lowerdir={self.lower},upperdir={self.upper},"
            f"workdir={self.base / 'work'} {mnt}\n"
            f"mount -t proc proc {mnt}/proc\n"
            f"mount --rbind /dev {mnt}/dev\n"
            f"mkdir -p {mnt}/debs\n"
            f"mount --bind {self.debs} {mnt}/debs\n"
            f'exec chroot {mnt} /bin/sh -ec "$PGCM_SCRIPT"\n'
        )
        environment = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "DEBIAN_FRONTEND": "noninteractive",
            "PGCM_SCRIPT": script,
            **(env or {}),
        }
        result = subprocess.run(
            ["unshare", "--mount", "--net", "--fork", "/bin/sh", "-c", setup],
            capture_output=True, text=True, env=environment, timeout=_COMMAND_TIMEOUT_S,
            check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(
                f"exit {result.returncode}: {script}\nstdout:\n{result.stdout}\n"
                f"stderr:\n{result.stderr}"
            )
        return result

    def out(self, script: str) -> str:
        """Run ``script``; return its stdout."""
        return self.run(script).stdout


def build_debs(out: Path, revision: str, names: tuple[str, ...] = ()) -> list[Path]:
    """Build the packages (all, or ``names``) with ``revision`` into ``out``."""
    subprocess.run(
        [sys.executable, str(ROOT / "packaging" / "build_debs.py"), str(out),
         "--revision", revision, *names],
        check=True, capture_output=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    return sorted(out.glob(f"*_*-{revision}_*.deb"))


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a directory holding the three .debs (revision 1)."""
    given = os.environ.get("PGCM_DEBS")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("debs")
    build_debs(out, "1")
    return out


@contextlib.contextmanager
def _new_root(debs: Path, base: Path) -> Iterator[DebianRoot]:
    for name in ("upper", "work", "mnt"):
        (base / name).mkdir()
    staged = base / "debs"
    staged.mkdir()
    for deb in debs.glob("*.deb"):
        shutil.copyfile(deb, staged / deb.name)
    try:
        yield DebianRoot(base_root(), base, staged)
    finally:
        # The overlay's work directory holds root-only leftovers; the namespaces are gone.
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def debian_root(debs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DebianRoot]:
    """A fresh copy-on-write Debian 12 root shared by one test module."""
    with _new_root(debs, tmp_path_factory.mktemp("debroot")) as root:
        yield root


@pytest.fixture
def fresh_debian_root(debs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DebianRoot]:
    """A fresh copy-on-write Debian 12 root for one test."""
    with _new_root(debs, tmp_path_factory.mktemp("debroot")) as root:
        yield root
