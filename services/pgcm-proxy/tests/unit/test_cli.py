from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgcm_proxy.cli import main


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
    assert "Readiness" in out
    assert "not implemented" not in out
    assert "show-config" in out
    assert "--config-file" in out
    assert "--pgbouncer-config-template-file" in out
    assert "--etcd-stream-poll-interval" in out


def test_run_with_a_missing_template_exits_2_naming_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nope.template"
    argv = ["--log-format", "json", "run", "--pgbouncer-config-template-file", str(missing)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        f"pgcm-proxy: invalid setting 'pgbouncer_config_template_file': cannot read {missing}"
        in err
    )


def test_run_with_a_template_that_routes_nothing_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    template = tmp_path / "t"
    template.write_text("[pgbouncer]\nx = {{.Host}}\n")
    assert main(["run", "--pgbouncer-config-template-file", str(template)]) == 2
    assert "no [databases] entry uses {{.Host}}" in capsys.readouterr().err


def test_the_service_does_not_load_what_it_never_calls() -> None:
    # asyncpg is PgBouncerAdmin's (supervise's PAUSE/RESUME); the proxy talks to PgBouncer
    # through RoutingConsole only. prometheus_client waits for metrics to be enabled.
    probe = (
        "import sys\n"
        "import pgcm_proxy.cli, pgcm_proxy.app\n"
        "print([m for m in ('asyncpg', 'prometheus_client') if m in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout == "[]\n"
