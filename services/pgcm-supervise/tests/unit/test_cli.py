from __future__ import annotations

import os
import subprocess
import sys
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


def test_the_daemon_loads_no_postgres_driver() -> None:
    # The local PostgreSQL facts go through pgcm's own simple-query client (ADR 0005).
    # A fresh interpreter: this test process may have imported asyncpg for other tests.
    probe = (
        "import sys\n"
        "import pgcm_supervise.cli, pgcm_supervise.app, pgcm_supervise.status\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'asyncpg', 'psycopg'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout == "[]\n"
