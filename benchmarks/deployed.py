"""The services as an operator deploys them: each wheel alone in a venv of its own.

Memory and start-up numbers must not include what only the development venv holds
(pytest, import-linter's rich and pygments — structlog loads rich whenever it can
import it — mypy, nox). :func:`deployed_script` builds the workspace's wheels once per
benchmark run and installs one service with its runtime dependencies only, as the
``build`` nox session does; the venvs are removed when the run ends.
:func:`unit_environment` is the ``Environment=`` of the service's shipped systemd unit,
so a benchmark starts the daemon the way the unit does.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
_venvs: dict[str, Path] = {}  # service -> its console script
_workdir: Path | None = None


def _scratch() -> Path:
    global _workdir  # noqa: PLW0603  # one scratch directory per benchmark process
    if _workdir is None:
        _workdir = Path(tempfile.mkdtemp(prefix="pgcm-bench-deployed-"))
        atexit.register(shutil.rmtree, _workdir, ignore_errors=True)
        build_wheels(ROOT, _workdir / "dist")
    return _workdir


def build_wheels(tree: Path, dist: Path) -> None:
    """Build every wheel of the workspace checked out at ``tree`` into ``dist``.

    Raises:
        subprocess.CalledProcessError: the build failed.
    """
    subprocess.run(
        ["uv", "build", "--all-packages", "--no-sources", "--quiet", "--out-dir", str(dist)],
        cwd=tree, check=True,
    )  # fmt: skip


def install_alone(service: str, dist: Path, venv: Path) -> Path:
    """Install ``service`` from the wheels in ``dist`` into a new ``venv``; return its script.

    Our own packages are refreshed in uv's cache, which keys a find-links wheel by path
    and name: a second build into the same path would otherwise install the first.

    Raises:
        subprocess.CalledProcessError: installing failed.
    """
    subprocess.run(["uv", "venv", "--quiet", str(venv)], check=True)
    ours = sorted({wheel.name.split("-")[0].replace("_", "-") for wheel in dist.glob("*.whl")})
    refresh = [arg for package in ours for arg in ("--refresh-package", package)]
    subprocess.run(
        ["uv", "pip", "install", "--quiet", *refresh, "--python", str(venv / "bin" / "python"),
         "--find-links", str(dist), service],
        check=True,
    )  # fmt: skip
    return venv / "bin" / service


def deployed_script(service: str) -> Path:
    """Return the console script of ``service`` installed alone in a fresh venv.

    The venv is world-readable so that a service can run as another user (postgres).

    Raises:
        subprocess.CalledProcessError: building or installing failed.
    """
    if service not in _venvs:
        work = _scratch()
        _venvs[service] = install_alone(service, work / "dist", work / f"venv-{service}")
        work.chmod(0o755)
    return _venvs[service]


def unit_environment(service: str) -> dict[str, str]:
    """Return the ``Environment=`` assignments of ``deploy/systemd/<service>.service``.

    Raises:
        ValueError: an ``Environment=`` line is not ``NAME=value`` pairs.
    """
    unit = ROOT / "deploy" / "systemd" / f"{service}.service"
    assignments: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if not line.startswith("Environment="):
            continue
        for pair in line.removeprefix("Environment=").split():
            name, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"{unit}: not NAME=value: {pair!r}")
            assignments[name] = value
    return assignments


def terminate(process: subprocess.Popen[bytes], *, timeout_s: float = 15) -> None:
    """SIGTERM a process a benchmark started, SIGKILL it after ``timeout_s``; reap it."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
