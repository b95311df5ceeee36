from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from pgcm_common.errors import ConfigError
from pgcm_common.settings import load_settings
from pgcm_proxy.settings import ProxySettings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("PGCM_"):
            monkeypatch.delenv(name)


def test_defaults_are_compatible_with_the_original() -> None:
    s, _ = load_settings(ProxySettings)
    assert s.cluster.namespace == ""
    assert s.cluster.master_path == "/master"
    assert s.pgbouncer_config_file == Path("/etc/pgbouncer/pgbouncer.ini")
    assert s.pgbouncer_config_template_file == Path("/etc/pgbouncer/pgbouncer.ini.template")
    assert s.proxy_id


def test_original_retry_names_set_the_backoff_cap(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[proxy]\npgbouncer-retry-timeout = "2s"\n')
    s, _ = load_settings(ProxySettings, config_file=path)
    assert s.retry_max_interval == timedelta(seconds=2)


def test_empty_proxy_id_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(ProxySettings, overrides={"proxy_id": ""})
    assert info.value.key == "proxy_id"
