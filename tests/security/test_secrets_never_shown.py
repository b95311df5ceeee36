"""No secret ever reaches ``show-config`` output or a log line of any pgcm service.

Each real CLI (the console scripts of this venv) runs ``show-config`` with every secret
it has set once through the TOML file and once through ``PGCM_*`` environment
variables; the secret text must not appear on stdout or stderr, and the output loaded
back must not yield a fake secret.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest
import structlog
import tomli_w
from pydantic import SecretStr

from pgcm_common.logging import configure_logging
from pgcm_common.settings import load_settings
from pgcm_supervise.settings import SuperviseSettings

pytestmark = pytest.mark.integration

BIN: Final = Path(sys.executable).parent
PGBOUNCER_PASSWORD: Final = "bouncer-Secret-1f2e"  # noqa: S105 - throw-away, must never be shown
ETCD_PASSWORD: Final = "etcd-Secret-9a8b"  # noqa: S105 - throw-away, must never be shown
TOKEN: Final = "token-Secret-77c1"  # noqa: S105 - throw-away, must never be shown
NAMED_TOKEN: Final = "named-Secret-5d4e"  # noqa: S105 - throw-away, must never be shown
DSN_PASSWORD: Final = "dsn-Secret-3c2b"  # noqa: S105 - throw-away, must never be shown
SECRETS: Final = (PGBOUNCER_PASSWORD, ETCD_PASSWORD, TOKEN, NAMED_TOKEN, DSN_PASSWORD)
SHARED: Final[dict[str, dict[str, object]]] = {
    "etcd": {"username": "root", "password": ETCD_PASSWORD},
    "pgbouncer": {"password": PGBOUNCER_PASSWORD},
}
TOML: Final[dict[str, dict[str, object]]] = {
    "pgcm-supervise": {
        **SHARED,
        "supervise": {
            "token": TOKEN,
            "tokens": {"alice": NAMED_TOKEN},
            "postgres_dsn": f"postgresql://postgres:{DSN_PASSWORD}@127.0.0.1/postgres",
        },
    },
    "pgcm-proxy": dict(SHARED),
    "pgcm-failover": {**SHARED, "failover": {"token": TOKEN}},
}
ENV: Final[dict[str, dict[str, str]]] = {
    "pgcm-supervise": {
        "PGCM_ETCD__USERNAME": "root",
        "PGCM_ETCD__PASSWORD": ETCD_PASSWORD,
        "PGCM_PGBOUNCER__PASSWORD": PGBOUNCER_PASSWORD,
        "PGCM_TOKEN": TOKEN,
        "PGCM_TOKENS": json.dumps({"alice": NAMED_TOKEN}),
        "PGCM_POSTGRES_DSN": f"host=127.0.0.1 user=postgres password={DSN_PASSWORD}",
    },
    "pgcm-proxy": {
        "PGCM_ETCD__USERNAME": "root",
        "PGCM_ETCD__PASSWORD": ETCD_PASSWORD,
        "PGCM_PGBOUNCER__PASSWORD": PGBOUNCER_PASSWORD,
    },
    "pgcm-failover": {
        "PGCM_ETCD__USERNAME": "root",
        "PGCM_ETCD__PASSWORD": ETCD_PASSWORD,
        "PGCM_PGBOUNCER__PASSWORD": PGBOUNCER_PASSWORD,
        "PGCM_TOKEN": TOKEN,
    },
}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PGCM_")}


def _show_config(service: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / service), "--log-format", "json", "show-config", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
    )


def _assert_no_secret(text: str) -> None:
    leaked = [secret for secret in SECRETS if secret in text]
    assert not leaked, f"secrets leaked: {leaked}"
    assert "**********" not in text, "a masked value would load back as a literal secret"


@pytest.mark.parametrize("service", sorted(TOML))
def test_show_config_never_prints_secrets_set_in_toml(service: str, tmp_path: Path) -> None:
    config = tmp_path / "pgcm.toml"
    config.write_text(tomli_w.dumps(TOML[service]))
    result = _show_config(service, "--config-file", str(config), env=_clean_env())
    assert result.returncode == 0, result.stderr
    assert "<redacted>" in result.stdout
    _assert_no_secret(result.stdout + result.stderr)


@pytest.mark.parametrize("service", sorted(ENV))
def test_show_config_never_prints_secrets_set_in_the_environment(service: str) -> None:
    result = _show_config(service, env={**_clean_env(), **ENV[service]})
    assert result.returncode == 0, result.stderr
    assert "<redacted>" in result.stdout
    _assert_no_secret(result.stdout + result.stderr)


def test_show_config_output_loaded_back_yields_no_fake_token(tmp_path: Path) -> None:
    config = tmp_path / "pgcm.toml"
    config.write_text(tomli_w.dumps({"supervise": {"tokens": {"alice": NAMED_TOKEN}}}))
    shown = _show_config("pgcm-supervise", "--config-file", str(config), env=_clean_env())
    assert shown.returncode == 0, shown.stderr
    assert "# alice = <redacted>" in shown.stdout
    reloaded = tmp_path / "shown.toml"
    reloaded.write_text(shown.stdout)
    settings, _ = load_settings(SuperviseSettings, config_file=reloaded)
    assert settings.tokens == {}
    assert settings.token is None


def test_bad_secret_setting_error_does_not_echo_the_secret(tmp_path: Path) -> None:
    config = tmp_path / "pgcm.toml"
    # A password without its user is refused; the message must name keys, not values.
    config.write_text(tomli_w.dumps({"etcd": {"password": ETCD_PASSWORD}}))
    result = _show_config("pgcm-proxy", "--config-file", str(config), env=_clean_env())
    assert result.returncode == 2
    assert "etcd" in result.stderr
    _assert_no_secret(result.stdout + result.stderr)


def test_json_logs_redact_secret_values_and_secret_named_keys() -> None:
    out = io.StringIO()
    configure_logging(json=True, stream=out)
    try:
        settings, _ = load_settings(
            SuperviseSettings,
            overrides={
                "token": TOKEN,
                "tokens": {"alice": NAMED_TOKEN},
                "etcd": {"username": "root", "password": ETCD_PASSWORD},
                "pgbouncer": {"password": PGBOUNCER_PASSWORD},
            },
        )
        log = structlog.get_logger("pgcm.security.test")
        log.info("settings.loaded", settings=settings.model_dump())
        log.info("auth.attempt", token=TOKEN, password=PGBOUNCER_PASSWORD)
        log.info("nested", extra={"etcd_password": ETCD_PASSWORD, "items": [SecretStr(TOKEN)]})
        log.info("pgbouncer.connect", api_key=NAMED_TOKEN, authorization=f"Bearer {TOKEN}")
    finally:
        structlog.reset_defaults()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    for line in lines:
        json.loads(line)
    _assert_no_secret(out.getvalue())
    assert out.getvalue().count("<redacted>") >= 8
