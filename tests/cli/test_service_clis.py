"""The command-line contract every pgcm service shares, checked once for all three.

Service-specific options and run behaviour stay in each service's own tests/unit.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest

from pgcm_failover.cli import main as failover_main
from pgcm_proxy.cli import main as proxy_main
from pgcm_supervise.cli import main as supervise_main


@dataclass(frozen=True, slots=True)
class Service:
    prog: str
    main: Callable[[Sequence[str]], int]
    tables: frozenset[str]
    other_table: str
    bad_env: tuple[str, str]
    bad_key: str
    model_check: tuple[tuple[str, ...], str]
    has_token: bool


SERVICES = [
    Service(
        "pgcm-proxy",
        proxy_main,
        frozenset({"proxy", "cluster", "etcd", "pgbouncer"}),
        "failover",
        ("PGCM_POLL_INTERVAL", "often"),
        "poll_interval",
        (("--retry-interval", "2s", "--retry-max-interval", "1s"), "retry_max_interval"),
        has_token=False,
    ),
    Service(
        "pgcm-supervise",
        supervise_main,
        frozenset({"supervise", "cluster", "etcd", "pgbouncer"}),
        "proxy",
        ("PGCM_CRM_MON_INTERVAL", "-1s"),
        "crm_mon_interval",
        (("--bind-address", "10.0.0.1:8080"), "bind_address"),
        has_token=True,
    ),
    Service(
        "pgcm-failover",
        failover_main,
        frozenset({"failover", "cluster", "etcd"}),
        "supervise",
        ("PGCM_PAUSE_TIMEOUT", "5x"),
        "pause_timeout",
        (("--pause-timeout", "30s"), "pause_expiry"),
        has_token=True,
    ),
]


@pytest.fixture(params=SERVICES, ids=[s.prog for s in SERVICES])
def service(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Service:
    for name in list(os.environ):
        if name.upper().startswith("PGCM_"):
            monkeypatch.delenv(name)
    chosen: Service = request.param
    return chosen


def test_show_config_prints_toml_that_loads_back(
    service: Service, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert service.main(["show-config"]) == 0
    text = capsys.readouterr().out
    assert set(tomllib.loads(text)) == service.tables
    path = tmp_path / "pgcm.toml"
    path.write_text(text)
    assert service.main(["show-config", "--config-file", str(path)]) == 0
    # The first line names the file the configuration came from; the rest is identical.
    assert capsys.readouterr().out.split("\n", 1)[1] == text.split("\n", 1)[1]


def test_help_names_the_tables_the_service_reads(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        service.main(["--help"])
    assert stopped.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    named = re.search(r"--config-file \(tables (.*?); other services' tables are ignored\)", text)
    assert named is not None, text
    assert set(re.findall(r"\[(\w+)\]", named.group(1))) == service.tables


def test_flags_after_the_subcommand_override_the_file_and_other_tables_are_ignored(
    service: Service, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "pgcm.toml"
    path.write_text(f'[cluster]\nnamespace = "/file"\n[{service.other_table}]\nanything = 1\n')
    argv = ["--config-file", str(path), "show-config", "--etcd-namespace", "/flag"]
    assert service.main(argv) == 0
    assert tomllib.loads(capsys.readouterr().out)["cluster"]["namespace"] == "/flag"


def test_unknown_key_exits_2_naming_the_key(
    service: Service, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "pgcm.toml"
    own_table = service.prog.removeprefix("pgcm-")
    path.write_text(f"[{own_table}]\nno_such_key = 1\n")
    assert service.main(["show-config", "--config-file", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"{service.prog}: invalid setting 'no_such_key': unknown key\n"
    )


def test_bad_value_exits_2_naming_the_key(
    service: Service, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(*service.bad_env)
    assert service.main(["show-config"]) == 2
    assert f"invalid setting '{service.bad_key}'" in capsys.readouterr().err


def test_bad_json_in_a_nested_env_variable_names_that_variable(
    service: Service, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGCM_ETCD__ENDPOINTS", "[127.0.0.1:2379")
    assert service.main(["show-config"]) == 2
    assert capsys.readouterr().err == (
        f"{service.prog}: invalid setting 'PGCM_ETCD__ENDPOINTS': not valid JSON\n"
    )


def test_a_check_across_settings_names_the_key_it_is_about(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    flags, key = service.model_check
    assert service.main(["show-config", *flags]) == 2
    assert capsys.readouterr().err.startswith(f"{service.prog}: invalid setting {key!r}: ")


@pytest.mark.parametrize("command", ["show-config", "run"])
def test_an_empty_token_is_refused_by_every_command_naming_the_key(
    service: Service,
    command: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not service.has_token:
        pytest.skip(f"{service.prog} has no token")
    monkeypatch.setenv("PGCM_TOKEN", "")
    assert service.main([command]) == 2
    assert capsys.readouterr().err == (
        f"{service.prog}: invalid setting 'token': must not be empty (leave it unset instead)\n"
    )


def test_version_prints_the_installed_distribution_version(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        service.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"{service.prog} {version(service.prog)}\n"


def test_the_console_script_answers_version_without_importing_the_service(
    service: Service,
) -> None:
    package = service.prog.replace("-", "_")
    probe = (
        "import sys\n"
        f"from {package}._entry import main\n"
        f"sys.argv = [{service.prog!r}, '--version']\n"
        "code = main()\n"
        f"heavy = [m for m in ({package + '.cli'!r}, 'pydantic', 'grpc') if m in sys.modules]\n"
        "print(code, heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout == f"{service.prog} {version(service.prog)}\n0 []\n"


@pytest.mark.parametrize("daemon", ["pgcm_proxy", "pgcm_supervise"])
def test_the_daemon_loads_the_serve_coroutine_it_names(daemon: str) -> None:
    cli = importlib.import_module(f"{daemon}.cli")
    app = importlib.import_module(f"{daemon}.app")
    assert cli.DAEMON.load_serve() is app.serve


@pytest.mark.parametrize("service", ["proxy", "supervise", "failover"])
def test_python_dash_m_runs_the_cli(service: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGCM_")}
    result = subprocess.run(
        [sys.executable, "-m", f"pgcm_{service}", "show-config"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert f"[{service}]" in result.stdout
