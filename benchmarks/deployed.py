"""The services as an operator deploys them: each wheel alone in a venv of its own.

Memory and start-up numbers must not include what only the development venv holds
(pytest, import-linter's rich and pygments — structlog loads rich whenever it can
import it — mypy, nox). :func:`deployed_script` builds the workspace's wheels once per
benchmark run and installs one service with its runtime dependencies only, as the
``build`` nox session does; the venvs are removed when the run ends.
:func:`installed_command` goes one step further: the service's Debian package (built
by ``packaging/build_debs.py``) unpacked, its bytecode compiled by the postinst's own
command, run by Debian's ``/usr/bin/python3`` as the packaged unit's ``ExecStart``
does. :func:`unit_environment` is the ``Environment=`` of the service's shipped systemd
unit, so a benchmark starts the daemon the way the unit does.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
_venvs: dict[str, Path] = {}  # service -> its console script
_installed: dict[str, list[str]] = {}  # service -> the argv prefix of its packaged command
SYSTEM_PYTHON: Final = Path("/usr/bin/python3")
_workdir: Path | None = None


def _scratch(*, wheels: bool = True) -> Path:
    global _workdir  # noqa: PLW0603  # one scratch directory per benchmark process
    if _workdir is None:
        _workdir = Path(tempfile.mkdtemp(prefix="pgcm-bench-deployed-"))
        atexit.register(shutil.rmtree, _workdir, ignore_errors=True)
    if wheels and not (_workdir / "dist").exists():
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


def _postinst_compile(service: str) -> str:
    """Return the postinst's bytecode-compiling command (a shell line using ``$VENV``)."""
    postinst = ROOT / "packaging" / service / "postinst"
    lines = [line.strip() for line in postinst.read_text().splitlines()]
    found = [line for line in lines if "-m compileall" in line and not line.startswith("#")]
    if len(found) != 1:
        raise RuntimeError(f"{postinst}: expected one compileall line, found {len(found)}")
    return found[0]


def unpack_package(service: str, deb: Path, root: Path) -> Path:
    """Unpack ``deb`` under ``root`` as dpkg would install it; return the package's venv.

    The venv's ``bin/python`` is the package's relative link to ``/usr/bin/python3``;
    unpacked under ``root`` it resolves to ``root/usr/bin/python3``, which is made a link
    to the real one, so Debian's interpreter runs and finds the venv's ``pyvenv.cfg`` and
    site-packages next to the link it was started through. The bytecode is compiled by
    the command the postinst runs.

    Raises:
        subprocess.CalledProcessError: unpacking or compiling failed.
        RuntimeError: the unpacked venv does not resolve its own site-packages.
    """
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    link = root / "usr" / "bin" / SYSTEM_PYTHON.name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(SYSTEM_PYTHON)
    venv = root / "usr" / "lib" / service
    subprocess.run(["sh", "-ec", _postinst_compile(service)], check=True,
                   env={**os.environ, "VENV": str(venv)})  # fmt: skip
    prefix = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sys; print(sys.prefix)"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    if Path(prefix) != venv:
        raise RuntimeError(f"{venv}/bin/python runs with prefix {prefix}, not its venv")
    return venv


def installed_command(service: str) -> list[str]:
    """Return the argv prefix that runs ``service`` from its Debian package as installed.

    The unit's ``ExecStart=/usr/bin/<service>`` is a link to the venv's console script,
    whose ``#!`` line names the venv's python: the kernel runs ``<venv>/bin/python
    <script>``, which is what this returns for the unpacked package. The packages are
    built once per benchmark process; the tree is world-readable so that a service can
    run as another user.

    Raises:
        subprocess.CalledProcessError: building, unpacking or compiling failed.
    """
    if service not in _installed:
        work = _scratch(wheels=False)
        debs = work / "debs"
        if not debs.exists():
            subprocess.run(
                [sys.executable, str(ROOT / "packaging" / "build_debs.py"), str(debs),
                 "--revision", "1"],
                check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        deb = next(debs.glob(f"{service}_*.deb"))
        venv = unpack_package(service, deb, work / f"root-{service}")
        work.chmod(0o755)
        _installed[service] = [str(venv / "bin" / "python"), str(venv / "bin" / service)]
    return _installed[service]


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
