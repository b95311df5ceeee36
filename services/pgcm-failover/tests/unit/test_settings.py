from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from pgcm_common.errors import ConfigError
from pgcm_common.settings import load_settings
from pgcm_failover.settings import FailoverSettings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("PGCM_"):
            monkeypatch.delenv(name)


def test_defaults_match_the_original() -> None:
    s, _ = load_settings(FailoverSettings)
    assert s.health_check_timeout == timedelta(seconds=2)
    assert s.lock_timeout == timedelta(seconds=5)
    assert s.pause_timeout == timedelta(seconds=5)
    assert s.pause_expiry == timedelta(seconds=25)
    assert s.pacemaker_timeout == timedelta(seconds=20)
    assert s.cluster.master_key == "/master"


def test_timeouts_take_sub_second_values_and_original_names(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[failover]\npause-timeout = "750ms"\nhealth-check-timeout = "250ms"\n'
        'failover-api-endpoints = ["a:8080", "b:8080"]\n'
    )
    s, _ = load_settings(FailoverSettings, config_file=path)
    assert s.pause_timeout == timedelta(milliseconds=750)
    assert s.health_check_timeout == timedelta(milliseconds=250)
    assert s.endpoints == ["a:8080", "b:8080"]


def test_pause_expiry_must_exceed_pause_timeout() -> None:
    with pytest.raises(ConfigError, match="pause_expiry must be longer"):
        load_settings(FailoverSettings, overrides={"pause_expiry": "1s", "pause_timeout": "2s"})


def test_endpoints_may_not_be_empty() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(FailoverSettings, overrides={"endpoints": []})
    assert info.value.key == "endpoints"
