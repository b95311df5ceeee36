"""Build the Debian packages of pgcm, one per node role, from this workspace.

Usage: ``python packaging/build_debs.py OUT_DIR [--revision N]`` (run as the ``deb`` nox
session does; needs uv, dpkg-deb, gzip and Debian's /usr/bin/python3).

Each package holds a self-contained virtual environment under ``/usr/lib/<package>``
built for Debian's own interpreter: the service's wheel, pgcm-common's wheel, and the
service's locked third-party dependencies only (``uv export --package`` from uv.lock),
so it installs offline from the .deb alone. ``/usr/bin/<command>`` is a symlink into
it. No bytecode is shipped: the postinst compiles it (plain and ``-OO``, for the units'
``PYTHONOPTIMIZE=2``) and the prerm removes it. The staged tree is packed with
``dpkg-deb --root-owner-group``; maintainer scripts and the control file come from
``packaging/<package>/`` with ``@TOKENS@`` filled in.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
HERE: Final = ROOT / "packaging"
SYSTEM_PYTHON: Final = Path("/usr/bin/python3")
MAINTAINER: Final = "pgcm developers <pgcm@example.org>"
# Generated code (grpc's, the interpreter's) must not be shipped: the postinst compiles.
_NOT_SHIPPED: Final = ("__pycache__", "direct_url.json")


@dataclass(frozen=True, slots=True)
class Package:
    """One Debian package: a service, its extra files, its Debian dependencies."""

    name: str  # also the distribution name and the command
    depends: tuple[str, ...]
    recommends: tuple[str, ...]
    summary: str
    description: str
    # (source relative to the repository, destination in the package, mode)
    files: tuple[tuple[str, str, int], ...]
    man_page: bool = True
    completion: bool = False

    @property
    def module(self) -> str:
        """Return the service's Python package name."""
        return self.name.replace("-", "_")

    @property
    def venv(self) -> Path:
        """Return where the virtual environment lives once installed."""
        return Path("/usr/lib") / self.name


_PYTHON_DEPENDS: Final = ("python3 (>= 3.11)", "python3 (<< 3.12)", "libc6 (>= 2.17)")

PACKAGES: Final = (
    Package(
        name="pgcm-supervise",
        depends=(*_PYTHON_DEPENDS, "pacemaker-cli-utils"),
        recommends=("pgbouncer",),
        summary="publish the PostgreSQL primary from Pacemaker to etcd; failover API",
        description=(
            "Runs on every PostgreSQL node of a Pacemaker/Corosync cluster: reads crm_mon,\n"
            "publishes the primary's address to etcd and serves the gRPC API that\n"
            "pgcm-failover drives (pause/resume the local PgBouncer, migrate). Ships the\n"
            "systemd unit, the Pacemaker alert agent and a sample configuration."
        ),
        files=(
            (
                "deploy/systemd/pgcm-supervise.service",
                "lib/systemd/system/pgcm-supervise.service",
                0o644,
            ),
            ("deploy/pacemaker/pgcm-alert-agent", "usr/libexec/pgcm/pgcm-alert-agent", 0o755),
            ("deploy/supervise/pgcm-supervise.toml", "etc/pgcm/supervise.toml", 0o640),
        ),
    ),
    Package(
        name="pgcm-proxy",
        depends=(*_PYTHON_DEPENDS, "pgbouncer"),
        recommends=(),
        summary="keep PgBouncer pointed at the PostgreSQL primary published in etcd",
        description=(
            "Runs on every host with a PgBouncer (PostgreSQL nodes and application\n"
            "nodes): follows the primary's address in etcd, renders pgbouncer.ini from a\n"
            "template, RELOADs PgBouncer and acknowledges in etcd. Ships the systemd\n"
            "unit, a sample template and a sample configuration."
        ),
        files=(
            ("deploy/systemd/pgcm-proxy.service", "lib/systemd/system/pgcm-proxy.service", 0o644),
            ("deploy/proxy/pgcm-proxy.toml", "etc/pgcm/proxy.toml", 0o640),
            ("deploy/proxy/pgbouncer.ini.template", "etc/pgcm/pgbouncer.ini.template", 0o644),
        ),
    ),
    Package(
        name="pgcm-failover",
        depends=(*_PYTHON_DEPENDS, "adduser"),
        recommends=(),
        summary="zero-downtime PostgreSQL switchover and cluster status (operator CLI)",
        description=(
            "The operator's command: pgcm-failover status shows the cluster,\n"
            "pgcm-failover --dry-run prints a switchover plan, pgcm-failover runs a\n"
            "switchover with PgBouncer paused on every node. Ships bash completion, a\n"
            "manual page and a sample configuration."
        ),
        files=(("deploy/failover/pgcm-failover.toml", "etc/pgcm/failover.toml", 0o640),),
        completion=True,
    ),
)


def workspace_version() -> str:
    """Return the version every member shares (pgcm-common's)."""
    doc = tomllib.loads((ROOT / "libs/pgcm-common/pyproject.toml").read_text())
    version: str = doc["project"]["version"]
    return version


def _run(*argv: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, check=True, capture_output=True, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    return result.stdout


def build_wheels(out: Path) -> None:
    """Build pgcm-common's and the services' wheels into ``out``."""
    for name in ("pgcm-common", *(p.name for p in PACKAGES)):
        _run("uv", "build", "--package", name, "--wheel", "--no-sources", "--quiet",
             "--out-dir", out)  # fmt: skip


def _stage_venv(package: Package, stage: Path, wheels: Path, work: Path) -> Path:
    """Create the package's venv at ``stage/<venv>`` with its locked dependencies."""
    venv = stage / package.venv.relative_to("/")
    requirements = work / f"{package.name}.txt"
    requirements.write_text(
        _run("uv", "export", "--package", package.name, "--locked", "--no-dev",
             "--no-emit-workspace", "--no-header", "--format", "requirements-txt")
    )  # fmt: skip
    _run("uv", "venv", "--quiet", "--no-project", "--python", SYSTEM_PYTHON, venv)
    python = venv / "bin" / "python"
    # Copies, never hard links into uv's cache: the files are stripped and chmod-ed
    # below, and with links that would rewrite the cache's (and every other venv's)
    # shared objects in place, under the processes that have them mapped.
    no_bytecode = {"UV_COMPILE_BYTECODE": "0", "UV_LINK_MODE": "copy"}
    _run("uv", "pip", "install", "--quiet", "--python", python, "--require-hashes",
         "--no-config", "-r", requirements, env=no_bytecode)  # fmt: skip
    version = workspace_version()
    ours = [
        wheels / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
        for name in ("pgcm-common", package.name)
    ]
    _run("uv", "pip", "install", "--quiet", "--python", python, "--no-deps",
         "--no-config", "--reinstall", *ours, env=no_bytecode)  # fmt: skip
    return venv


def _relocate(package: Package, venv: Path) -> None:
    """Rewrite the staging path to the installed path; drop what must not ship."""
    staged = str(venv).encode()
    final = str(package.venv).encode()
    for path in (venv / "bin").iterdir():
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if staged in data:
            path.write_bytes(data.replace(staged, final))
    # Only the service's own command and the interpreter links are kept in bin/: other
    # console scripts of dependencies (and the activate scripts) have no use here.
    keep = {"python", "python3", "python3.11", package.name}
    for path in (venv / "bin").iterdir():
        if path.name not in keep:
            path.unlink()
    _drop_generated(venv)
    for name in (".gitignore", "CACHEDIR.TAG", ".lock"):
        (venv / name).unlink(missing_ok=True)
    # The venv runs Debian's python3: a relative link (policy: no absolute links within
    # /usr), resolved to /usr/bin/python3 once installed.
    python = venv / "bin" / "python"
    if python.readlink() != SYSTEM_PYTHON:
        raise RuntimeError(f"{python} does not point at {SYSTEM_PYTHON}")
    python.unlink()
    python.symlink_to(os.path.relpath(SYSTEM_PYTHON, package.venv / "bin"))
    _normalise_library(venv / "lib")


def _drop_generated(venv: Path) -> None:
    """Remove bytecode and install records naming the build machine."""
    for path in sorted(venv.rglob("*"), reverse=True):
        if path.name not in _NOT_SHIPPED and path.suffix != ".pyc":
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _normalise_library(lib: Path) -> None:
    """Strip shared objects and give every file Debian's 0644."""
    for path in lib.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        if path.suffix == ".so" or ".so." in path.name:
            # Upstream wheels carry debug symbols; Debian ships stripped objects.
            _run("strip", "--strip-unneeded", "--remove-section=.comment",
                 "--remove-section=.note", path)  # fmt: skip
        # Modules are imported, never executed: wheels' stray exec bits go.
        path.chmod(0o644)


def _help_text(package: Package, venv: Path) -> str:
    return _run(venv / "bin" / "python", "-m", package.module, "--help",
                env={"COLUMNS": "80", "PGCM_LOG_FORMAT": "console"})  # fmt: skip


def _man_page(package: Package, version: str, help_text: str) -> bytes:
    """Return a gzipped roff manual page holding the command's --help."""
    escaped = help_text.replace("\\", "\\e").replace("\n.", "\n\\&.").replace("\n'", "\n\\&'")
    page = (
        f'.TH {package.name.upper()} 1 "" "pgcm {version}" "pgcm"\n'
        f".SH NAME\n{package.name} \\- {package.summary}\n"
        f".SH SYNOPSIS\n.B {package.name}\n[\\fIOPTIONS\\fR] [\\fICOMMAND\\fR]\n"
        f".SH DESCRIPTION\n.nf\n{escaped}.fi\n"
        ".SH FILES\n.TP\n"
        f".I /etc/pgcm/{package.name.removeprefix('pgcm-')}.toml\n"
        "The packaged configuration (see docs/install.md).\n"
    )
    return gzip.compress(page.encode(), compresslevel=9, mtime=0)


_COMPLETION_PROBE: Final = """
import argparse, json, sys
from pgcm_failover.cli import build_parser
parser = build_parser()
def options(p):
    return sorted(o for a in p._actions for o in a.option_strings)
sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
json.dump({"": options(parser), **{n: options(p) for n, p in sub.choices.items()}}, sys.stdout)
"""


def _bash_completion(package: Package, venv: Path) -> str:
    """Return a bash completion script for the command's subcommands and options."""
    import json  # noqa: PLC0415 - only this step reads the probe's output

    table: dict[str, list[str]] = json.loads(_run(venv / "bin" / "python", "-c", _COMPLETION_PROBE))
    commands = " ".join(name for name in table if name)
    function = "_" + package.module
    cases = "".join(
        f'        {name}) opts="{" ".join(opts)}" ;;\n' for name, opts in table.items() if name
    )
    return (
        f"# bash completion for {package.name} (generated from its argument parser)\n"
        f"{function}() {{\n"
        "    local cur prev command opts word\n"
        '    cur="${COMP_WORDS[COMP_CWORD]}"\n'
        '    prev="${COMP_WORDS[COMP_CWORD-1]}"\n'
        "    case $prev in\n"
        "        --config-file|--tls-ca-file|--tls-cert-file|--tls-key-file|--ca-file|"
        "--cert-file|--key-file)\n"
        '            COMPREPLY=($(compgen -f -- "$cur")); return ;;\n'
        "    esac\n"
        '    command=""\n'
        '    for word in "${COMP_WORDS[@]:1:COMP_CWORD-1}"; do\n'
        f"        case $word in {'|'.join(n for n in table if n)}) command=$word ;; esac\n"
        "    done\n"
        "    case $command in\n"
        f"{cases}"
        f'        *) opts="{" ".join(table[""])}" ;;\n'
        "    esac\n"
        "    if [[ $cur == -* || -n $command ]]; then\n"
        '        COMPREPLY=($(compgen -W "$opts" -- "$cur"))\n'
        "    else\n"
        f'        COMPREPLY=($(compgen -W "{commands} $opts" -- "$cur"))\n'
        "    fi\n"
        "}\n"
        f"complete -F {function} {package.name}\n"
    )


def _fill(template: Path, tokens: dict[str, str]) -> str:
    text = template.read_text()
    for key, value in tokens.items():
        text = text.replace(f"@{key}@", value)
    leftover = re.search(r"@[A-Z_]+@", text)
    if leftover:
        raise RuntimeError(f"{template}: unfilled token {leftover[0]}")
    return text


def _installed_size_kib(stage: Path) -> int:
    total = 0
    for path in stage.rglob("*"):
        if path.is_relative_to(stage / "DEBIAN"):
            continue
        total += 1 if path.is_symlink() or path.is_dir() else -(-path.stat().st_size // 1024)
    return total


def _doc_files(package: Package, stage: Path, version: str) -> None:
    doc = stage / "usr/share/doc" / package.name
    doc.mkdir(parents=True)
    shutil.copyfile(HERE / "copyright", doc / "copyright")
    when = format_datetime(datetime.fromtimestamp(_source_date(), tz=UTC))
    changelog = (
        f"{package.name} ({version}) unstable; urgency=medium\n\n"
        f"  * Built from the pgcm workspace; release notes are in CHANGELOG.md.\n\n"
        f" -- {MAINTAINER}  {when}\n"
    )
    (doc / "changelog.Debian.gz").write_bytes(gzip.compress(changelog.encode(), 9, mtime=0))


def _source_date() -> int:
    """Return SOURCE_DATE_EPOCH, else the last commit's time (reproducible dates)."""
    if epoch := os.environ.get("SOURCE_DATE_EPOCH"):
        return int(epoch)
    try:
        return int(_run("git", "log", "-1", "--format=%ct").strip())
    except (subprocess.CalledProcessError, ValueError, FileNotFoundError):
        return 0


def build_package(package: Package, out: Path, wheels: Path, work: Path, revision: str) -> Path:
    """Stage and pack one package; return the .deb's path."""
    upstream = workspace_version()
    version = f"{upstream}-{revision}"
    stage = work / package.name
    venv = _stage_venv(package, stage, wheels, work)
    # Run from the staged venv before its interpreter link is made relative.
    help_text = _help_text(package, venv)
    # A bare --help is served from this page (pgcm_common.fasthelp): no imports.
    page = venv / "share" / "pgcm-help" / f"{package.name}.txt"
    page.parent.mkdir(parents=True)
    page.write_text(help_text)
    completion_text = _bash_completion(package, venv) if package.completion else ""
    _relocate(package, venv)
    (stage / "usr/bin").mkdir(parents=True)
    (stage / "usr/bin" / package.name).symlink_to(f"../lib/{package.name}/bin/{package.name}")
    for source, destination, mode in package.files:
        target = stage / destination
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / source, target)
        target.chmod(mode)
    if package.man_page:
        man = stage / "usr/share/man/man1" / f"{package.name}.1.gz"
        man.parent.mkdir(parents=True)
        man.write_bytes(_man_page(package, upstream, help_text))
    if package.completion:
        completion = stage / "usr/share/bash-completion/completions" / package.name
        completion.parent.mkdir(parents=True)
        completion.write_text(completion_text)
    _doc_files(package, stage, version)
    overrides = HERE / package.name / "lintian-overrides"
    if overrides.exists():
        target = stage / "usr/share/lintian/overrides" / package.name
        target.parent.mkdir(parents=True)
        shutil.copyfile(overrides, target)
    for path in [stage, *stage.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    control = stage / "DEBIAN"
    control.mkdir()
    arch = _run("dpkg", "--print-architecture").strip()
    tokens = {
        "PACKAGE": package.name,
        "VERSION": version,
        "ARCH": arch,
        "MAINTAINER": MAINTAINER,
        "DEPENDS": ", ".join(package.depends),
        "RECOMMENDS": ", ".join(package.recommends),
        "SUMMARY": package.summary,
        "DESCRIPTION": "\n".join(f" {line}" for line in package.description.splitlines()),
        "INSTALLED_SIZE": str(_installed_size_kib(stage)),
        "VENV": str(package.venv),
    }
    control_text = _fill(HERE / "control.in", tokens)
    if not package.recommends:
        control_text = "".join(
            line for line in control_text.splitlines(keepends=True)
            if not line.startswith("Recommends:")
        )  # fmt: skip
    (control / "control").write_text(control_text)
    conffiles = sorted("/" + str(p.relative_to(stage)) for p in (stage / "etc").rglob("*")
                       if p.is_file())  # fmt: skip
    (control / "conffiles").write_text("".join(f"{c}\n" for c in conffiles))
    for name in ("preinst", "postinst", "prerm", "postrm"):
        script = HERE / package.name / name
        if script.exists():
            (control / name).write_text(_fill(script, tokens))
            (control / name).chmod(0o755)
    deb = out / f"{package.name}_{version}_{arch}.deb"
    # gzip: xz saves ~25 % of the size but takes a minute per package on a small CI host.
    _run("dpkg-deb", "--root-owner-group", "-Zgzip", "--build", stage, deb,
         env={"SOURCE_DATE_EPOCH": str(_source_date())})  # fmt: skip
    return deb


def build_all(out: Path, revision: str = "1", names: Sequence[str] = ()) -> list[Path]:
    """Build every package (or those in ``names``) into ``out``; return the .deb paths."""
    unknown = set(names) - {p.name for p in PACKAGES}
    if unknown:
        raise ValueError(f"no such package: {sorted(unknown)}")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pgcm-debs-") as tmp:
        work = Path(tmp)
        wheels = work / "wheels"
        build_wheels(wheels)
        chosen = [p for p in PACKAGES if not names or p.name in names]
        return [build_package(p, out, wheels, work, revision) for p in chosen]


def main(argv: list[str] | None = None) -> int:
    """Build the packages named on the command line (all by default)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory for the .deb files")
    parser.add_argument("--revision", default="1", help="Debian revision (default: 1)")
    parser.add_argument("packages", nargs="*", help="packages to build (default: all)")
    args = parser.parse_args(argv)
    for deb in build_all(args.out.resolve(), args.revision, args.packages):
        print(deb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
