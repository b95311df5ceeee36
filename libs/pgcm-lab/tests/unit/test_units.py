from __future__ import annotations

from pathlib import Path

import pytest

from pgcm_lab import units
from pgcm_lab.units import UnitError, parse_duration, parse_unit, prepare

ROOT = Path(__file__).resolve().parents[4]
SYSTEMD = ROOT / "deploy" / "systemd"


def test_the_shipped_supervise_unit_parses_to_what_systemd_runs() -> None:
    spec = parse_unit("pgcm-supervise", (SYSTEMD / "pgcm-supervise.service").read_text())
    assert spec.exec_start == ("/usr/bin/pgcm-supervise", "run", "--config-file", "%d/pgcm.toml")
    assert (spec.user, spec.group) == ("hacluster", "haclient")
    assert spec.environment == {"PYTHONOPTIMIZE": "2"}
    assert spec.credentials == {"pgcm.toml": "/etc/pgcm/supervise.toml"}
    assert spec.runtime_directories == ("pgcm",)
    assert spec.runtime_directory_mode == 0o750
    assert spec.umask == 0o027
    assert (spec.restart, spec.restart_sec) == ("on-failure", 2.0)
    assert spec.restart_prevent == frozenset({2})


def test_the_shipped_proxy_unit_runs_as_postgres() -> None:
    spec = parse_unit("pgcm-proxy", (SYSTEMD / "pgcm-proxy.service").read_text())
    assert spec.exec_start[0] == "/usr/bin/pgcm-proxy"
    assert (spec.user, spec.group) == ("postgres", "postgres")
    assert spec.credentials == {"pgcm.toml": "/etc/pgcm/proxy.toml"}


@pytest.mark.parametrize(("code", "restarts"), [(0, False), (1, True), (2, False), (-9, True)])
def test_on_failure_restarts_failures_but_not_a_clean_exit_or_a_config_error(
    code: int,
    restarts: bool,  # noqa: FBT001  # parametrized expectation
) -> None:
    spec = parse_unit("x", "[Service]\nExecStart=/bin/x\nRestart=on-failure\n"
                      "RestartPreventExitStatus=2\n")  # fmt: skip
    assert spec.restarts_after(code) is restarts


def test_no_restart_by_default() -> None:
    assert not parse_unit("x", "[Service]\nExecStart=/bin/x\n").restarts_after(1)


@pytest.mark.parametrize(
    "text",
    [
        "[Service]\nUser=x\n",  # no ExecStart
        "[Service]\nExecStart=/bin/a\nExecStart=/bin/b\n",
        "[Service]\nExecStart=-/bin/a\n",  # prefix not honoured
        "[Service]\nExecStart=/bin/a %n\n",  # specifier not honoured
        "[Service]\nExecStart=/bin/a\nRestart=on-abnormal\n",
        "[Service]\nExecStart=/bin/a\nRestartSec=soon\n",
        "[Service]\nExecStart=/bin/a\nEnvironment=NOEQUALS\n",
        "[Service]\nExecStart\n",
    ],
)
def test_a_unit_this_runner_would_run_differently_from_systemd_is_refused(text: str) -> None:
    with pytest.raises(UnitError):
        parse_unit("bad", text)


def test_exec_start_outside_the_service_section_is_ignored() -> None:
    spec = parse_unit("x", "[Unit]\nExecStart=/bin/no\n[Service]\nExecStart=/bin/yes\n")
    assert spec.exec_start == ("/bin/yes",)


@pytest.mark.parametrize(
    ("text", "seconds"), [("2s", 2.0), ("500ms", 0.5), ("1min", 60.0), ("3", 3.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_prepare_copies_the_credential_privately_and_substitutes_percent_d(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(units, "CREDENTIALS_ROOT", tmp_path / "credentials")
    source = tmp_path / "proxy.toml"
    source.write_text("[proxy]\n")
    text = (f"[Service]\nExecStart=/usr/bin/p run --config-file %d/pgcm.toml\n"
            f"LoadCredential=pgcm.toml:{source}\nEnvironment=A=1 B=2\n")  # fmt: skip
    argv, env = prepare(parse_unit("p", text), chown=False)
    creds = tmp_path / "credentials" / "p.service"
    assert argv == ["/usr/bin/p", "run", "--config-file", f"{creds}/pgcm.toml"]
    assert env == {"A": "1", "B": "2", "CREDENTIALS_DIRECTORY": str(creds)}
    assert (creds / "pgcm.toml").read_text() == "[proxy]\n"
    assert (creds / "pgcm.toml").stat().st_mode & 0o777 == 0o400
    assert creds.stat().st_mode & 0o777 == 0o500
