"""The three packages installed together into a clean Debian 12 root, offline."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Final

import pytest

from tests.deb.conftest import ROOT, DebianRoot

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]  # dpkg -i of 3 packages

PACKAGES: Final = ("pgcm-supervise", "pgcm-proxy", "pgcm-failover")
VERSION: Final = tomllib.loads((ROOT / "libs/pgcm-common/pyproject.toml").read_text())["project"][
    "version"
]


@pytest.fixture(scope="module")
def installed(debian_root: DebianRoot) -> DebianRoot:
    """The root with all three packages installed by dpkg, with no network."""
    debian_root.run("dpkg -i /debs/*.deb")
    return debian_root


def _stat(root: DebianRoot, path: str) -> str:
    return root.out(f"stat -c '%U:%G %a %F' {path}").strip()


@pytest.mark.parametrize("package", PACKAGES)
def test_the_command_is_on_path_and_reports_the_workspace_version(
    installed: DebianRoot, package: str
) -> None:
    assert installed.out(f"command -v {package}").strip() == f"/usr/bin/{package}"
    assert installed.out(f"{package} --version") == f"{package} {VERSION}\n"
    # The bare --help page rendered at build time is the live parser's, byte for byte.
    cached = installed.out(f"{package} --help")
    module = package.replace("-", "_")
    live = installed.out(f"/usr/lib/{package}/bin/python -m {module} --help")
    assert cached.startswith(f"usage: {package}")
    assert cached == live


@pytest.mark.parametrize("package", PACKAGES)
def test_the_venv_runs_debians_python3_with_bytecode_compiled_at_install(
    installed: DebianRoot, package: str
) -> None:
    venv = f"/usr/lib/{package}"
    python3 = installed.out("readlink -f /usr/bin/python3")
    assert installed.out(f"readlink -f {venv}/bin/python") == python3
    assert installed.out(f"head -n1 {venv}/bin/{package}").strip() == f"#!{venv}/bin/python"
    module = package.replace("-", "_")
    cache = f"{venv}/lib/python3.11/site-packages/{module}/__pycache__"
    files = installed.out(f"ls {cache}").split()
    assert "cli.cpython-311.pyc" in files
    assert "cli.cpython-311.opt-2.pyc" in files  # for the units' PYTHONOPTIMIZE=2
    # No bytecode is shipped: dpkg does not own what postinst compiled.
    owned = installed.out(f"dpkg -L {package}")
    assert ".pyc" not in owned
    # Only this package's locked dependencies, nothing of the development venv.
    site = installed.out(f"ls {venv}/lib/python3.11/site-packages")
    assert "pytest" not in site
    assert "mypy" not in site


def test_the_proxy_on_an_app_node_carries_no_xml_parser_nor_postgres_driver(
    installed: DebianRoot,
) -> None:
    site = installed.out("ls /usr/lib/pgcm-proxy/lib/python3.11/site-packages")
    assert "defusedxml" not in site
    # grpclib is installed for etcd's gRPC transport (client certificates with a
    # CommonName) and imported only when that transport is selected (ADR 0006).
    assert "grpclib" in site
    # The admin console client is pure Python (ADR 0005): no PostgreSQL driver here.
    assert "asyncpg" not in site


def test_supervise_carries_no_postgres_driver(installed: DebianRoot) -> None:
    # Its PostgreSQL probe speaks pgcm's own simple-query client (ADR 0005's addendum).
    site = installed.out("ls /usr/lib/pgcm-supervise/lib/python3.11/site-packages")
    assert "asyncpg" not in site
    assert "psycopg" not in site


def test_configuration_files_keep_secrets_from_other_users(installed: DebianRoot) -> None:
    # Each service's own file: root and the service's group only (never other users).
    assert _stat(installed, "/etc/pgcm/supervise.toml") == "root:haclient 640 regular file"
    assert _stat(installed, "/etc/pgcm/proxy.toml") == "root:postgres 640 regular file"
    assert _stat(installed, "/etc/pgcm/failover.toml") == "root:pgcm 640 regular file"
    assert _stat(installed, "/etc/pgcm/pgbouncer.ini.template") == "root:root 644 regular file"
    conffiles = installed.out("dpkg-query -W -f='${Conffiles}\\n' pgcm-supervise pgcm-proxy")
    for path in ("/etc/pgcm/supervise.toml", "/etc/pgcm/proxy.toml"):
        assert path in conffiles


def test_pgbouncer_config_directory_is_writable_by_the_proxy_user_only(
    installed: DebianRoot,
) -> None:
    assert _stat(installed, "/etc/pgbouncer") == "root:postgres 775 directory"
    assert installed.out("dpkg-statoverride --list /etc/pgbouncer").split() == [
        "root", "postgres", "775", "/etc/pgbouncer",
    ]  # fmt: skip
    # The proxy's user can replace pgbouncer.ini the way the writer does (rename).
    installed.run(
        "su -s /bin/sh postgres -c 'cp /etc/pgbouncer/pgbouncer.ini /etc/pgbouncer/.t "
        "&& mv /etc/pgbouncer/.t /etc/pgbouncer/pgbouncer.ini'"
    )


def test_the_operators_group_exists(installed: DebianRoot) -> None:
    assert installed.out("getent group pgcm").startswith("pgcm:")


@pytest.mark.parametrize("unit", ["pgcm-supervise.service", "pgcm-proxy.service"])
def test_units_pass_systemd_analyze_verify_and_run_the_packaged_command(
    installed: DebianRoot, unit: str
) -> None:
    path = f"/lib/systemd/system/{unit}"
    result = installed.run(f"systemd-analyze verify {path}", check=False)
    assert result.returncode == 0, result.stderr
    assert f"{unit}:" not in result.stderr  # no warning about our own unit
    text = installed.out(f"cat {path}")
    service = unit.removesuffix(".service")
    config = f"/etc/pgcm/{service.removeprefix('pgcm-')}.toml"
    assert f"ExecStart=/usr/bin/{service} run --config-file {config}" in text
    # Not enabled on a fresh install: the configuration must be edited first.
    assert installed.out(f"systemctl is-enabled {unit} || true").strip() == "disabled"


def test_the_alert_agent_man_pages_and_completion_are_installed(installed: DebianRoot) -> None:
    assert _stat(installed, "/usr/libexec/pgcm/pgcm-alert-agent") == "root:root 755 regular file"
    for package in PACKAGES:
        man = f"/usr/share/man/man1/{package}.1.gz"
        assert installed.run(f"test -s {man}", check=False).returncode == 0
    completion = installed.out("cat /usr/share/bash-completion/completions/pgcm-failover")
    assert "complete -F _pgcm_failover pgcm-failover" in completion
    assert "--dry-run" in completion
    assert "status" in completion


def test_the_packages_pass_lintian_without_errors(debs: Path) -> None:
    import shutil  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    if shutil.which("lintian") is None:
        pytest.fail("lintian is not installed (scripts/install-deps)")
    result = subprocess.run(
        ["lintian", "--fail-on", "error,warning",
         "--suppress-tags", "initial-upload-closes-no-bugs",  # see docs/packaging.md
         *map(str, sorted(debs.glob("*.deb")))],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
