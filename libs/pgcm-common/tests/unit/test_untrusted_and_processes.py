from __future__ import annotations

import pytest

from pgcm_common.pacemaker import run_command
from pgcm_common.processes import child_environment
from pgcm_common.untrusted import excerpt


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("n2", "'n2'"),
        ("a\nb\x1b", "'a\\nb\\x1b'"),
        ("n" * 40, f"'{'n' * 32}'... (40 chars)"),
        (b"ok", "b'ok'"),
        (b"\xff" * 40, "b'" + "\\xff" * 32 + "'... (40 bytes)"),
    ],
)
def test_excerpt_is_short_escaped_and_says_how_long_the_value_was(
    value: str | bytes, shown: str
) -> None:
    assert excerpt(value) == shown


def test_excerpt_of_a_megabyte_stays_short() -> None:
    assert len(excerpt("x" * 1_000_000)) < 60


def test_child_environment_keeps_only_what_tools_need() -> None:
    environ = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TZ": "UTC",
        "CIB_file": "/tmp/cib.xml",
        "PCMK_logfile": "/var/log/pacemaker.log",
        "HA_logfacility": "none",
        "OCF_ROOT": "/usr/lib/ocf",
        "PGCM_TOKEN": "s3cret",
        "PGCM_PGBOUNCER__PASSWORD": "pw",
        "PGCM_POSTGRES_DSN": "postgresql://u:pw@h/db",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "AWS_SECRET_ACCESS_KEY": "k",
    }
    assert child_environment(environ) == {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TZ": "UTC",
        "CIB_file": "/tmp/cib.xml",
        "PCMK_logfile": "/var/log/pacemaker.log",
        "HA_logfacility": "none",
        "OCF_ROOT": "/usr/lib/ocf",
    }


async def test_a_child_sees_no_pgcm_variable_but_keeps_cib_and_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGCM_TOKEN", "s3cret-token")
    monkeypatch.setenv("PGCM_PGBOUNCER__PASSWORD", "pgbouncer-pw")
    monkeypatch.setenv("PGCM_POSTGRES_DSN", "postgresql://u:dsn-pw@h/db")
    monkeypatch.setenv("CIB_file", "/tmp/saved-cib.xml")
    output = await run_command(["env"])
    assert output.returncode == 0
    seen = dict(line.split("=", 1) for line in output.stdout.decode().splitlines() if "=" in line)
    assert not [name for name in seen if name.startswith("PGCM_")]
    assert "s3cret-token" not in output.stdout.decode()
    assert seen["CIB_file"] == "/tmp/saved-cib.xml"
    assert "PATH" in seen
