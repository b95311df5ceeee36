from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pgcm_supervise.cli import main


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("PGCM_"):
            monkeypatch.delenv(name)


def test_help_describes_the_service_and_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "run (the default)" in out
    assert "show-config" in out
    assert "--config-file" in out
    assert "--bind-address" in out
    assert "--crm-mon-path" in out


def test_show_config_prints_toml_that_loads_back(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["show-config"]) == 0
    text = capsys.readouterr().out
    doc = tomllib.loads(text)
    assert set(doc) == {"supervise", "cluster", "etcd", "pgbouncer"}
    path = tmp_path / "pgcm.toml"
    path.write_text(text)
    assert main(["show-config", "--config-file", str(path)]) == 0
    assert capsys.readouterr().out.split("\n", 1)[1] == text.split("\n", 1)[1]


def test_flags_after_the_subcommand_override_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "pgcm.toml"
    path.write_text('[cluster]\nnamespace = "/file"\n[proxy]\nanything = 1\n')
    assert main(["--config-file", str(path), "show-config", "--etcd-namespace", "/flag"]) == 0
    assert tomllib.loads(capsys.readouterr().out)["cluster"]["namespace"] == "/flag"


def test_unknown_key_exits_2_naming_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "pgcm.toml"
    path.write_text("[supervise]\nno_such_key = 1\n")
    assert main(["show-config", "--config-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == "pgcm-supervise: invalid setting 'no_such_key': unknown key\n"


def test_bad_value_exits_2_naming_the_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGCM_CRM_MON_INTERVAL", "-1s")
    assert main(["show-config"]) == 2
    assert "invalid setting 'crm_mon_interval'" in capsys.readouterr().err


def test_run_with_an_unusable_nudge_socket_exits_2_naming_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    socket = tmp_path / "missing" / "supervise.sock"
    assert main(["--log-format", "json", "run", "--nudge-socket", str(socket)]) == 2
    assert "nudge_socket" in capsys.readouterr().err


def test_masked_token_copied_from_show_config_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "pgcm.toml"
    path.write_text('[supervise.tokens]\nalice = "**********"\n')
    assert main(["show-config", "--config-file", str(path)]) == 2
    assert "masked placeholder" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGCM_")}
    result = subprocess.run(
        [sys.executable, "-m", "pgcm_supervise", "show-config"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "[supervise]" in result.stdout
