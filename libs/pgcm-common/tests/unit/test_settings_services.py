"""Services bring their own tables: the library reads and converts what their models say."""

from __future__ import annotations

import argparse
import os
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import ClassVar, final

import pytest
import tomli_w
from pydantic import Field

from pgcm_common.errors import ConfigError
from pgcm_common.etcd import EtcdSettings
from pgcm_common.settings import (
    ClusterSettings,
    Duration,
    PgcmSettings,
    add_settings_arguments,
    load_settings,
)
from pgcm_common.settings.convert import convert_original_file


@final
class ToolSettings(PgcmSettings):
    section: ClassVar[str] = "tool"
    other_tables: ClassVar[frozenset[str]] = frozenset({"sibling"})
    original_keys: ClassVar[dict[str, str]] = {"pause-timeout": "pause_timeout"}
    conversion_notes: ClassVar[dict[str, tuple[str, ...]]] = {
        "pause_timeout": ("the original sent whole seconds",)
    }
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    etcd: EtcdSettings = Field(default_factory=EtcdSettings)
    pause_timeout: Duration = timedelta(seconds=5)


ORIGINAL = {
    "etcd-namespace": "/postgres",
    "etcd-endpoints": ["http://10.0.0.11:2379"],
    "pause-timeout": "4s",
    "bind-address": "127.0.0.1:18080",  # another service's key
    "pgbouncer-port": "6433",  # a shared table this service does not compose
    "etcd-get-timeout": "5s",  # dead
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("PGCM_"):
            monkeypatch.delenv(name)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_tables_the_model_names_as_other_services_are_skipped(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.toml", '[sibling]\nanything = 1\n[tool]\npause_timeout = "2s"\n')
    settings, _ = load_settings(ToolSettings, config_file=path)
    assert settings.pause_timeout == timedelta(seconds=2)


def test_a_service_table_the_model_does_not_name_is_an_error(tmp_path: Path) -> None:
    # [proxy] is a real service's table, but this model does not list it.
    path = _write(tmp_path, "a.toml", "[proxy]\nanything = 1\n")
    with pytest.raises(ConfigError, match="unknown top-level key") as info:
        load_settings(ToolSettings, config_file=path)
    assert info.value.key == "proxy"


def test_the_original_keys_come_from_the_models_and_others_are_skipped(tmp_path: Path) -> None:
    path = _write(tmp_path, "original.toml", tomli_w.dumps(ORIGINAL))
    settings, loaded = load_settings(ToolSettings, config_file=path)
    assert settings.cluster.namespace == "/postgres"
    assert settings.etcd.endpoints == ["http://10.0.0.11:2379"]
    assert settings.pause_timeout == timedelta(seconds=4)
    assert loaded is not None
    assert list(loaded.ignored) == ["etcd-get-timeout"]


def test_convert_keeps_the_keys_of_services_not_given_as_they_are(tmp_path: Path) -> None:
    original = _write(tmp_path, "original.toml", tomli_w.dumps(ORIGINAL))
    text = convert_original_file(original, (ToolSettings,))
    converted = tomllib.loads(text)
    assert converted == {
        "bind-address": "127.0.0.1:18080",
        "pgbouncer-port": 6433,
        "cluster": {"namespace": "/postgres"},
        "etcd": {"endpoints": ["http://10.0.0.11:2379"]},
        "tool": {"pause_timeout": "4s"},
    }
    assert "# the original sent whole seconds" in text
    assert "#   etcd-get-timeout: " in text
    path = _write(tmp_path, "pgcm.toml", text)
    from_converted, _ = load_settings(ToolSettings, config_file=path)
    from_original, _ = load_settings(ToolSettings, config_file=original)
    assert from_converted == from_original


def test_names_the_original_only_read_from_its_file_are_not_flags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_settings_arguments(parser, ToolSettings)
    parser.parse_args(["--etcd-keep-alive-time", "3s"])  # the original's flag
    with pytest.raises(SystemExit):  # a name only its file and environment had
        parser.parse_args(["--etcd-dial-keep-alive-time", "3s"])
    monkeypatch.setenv("PGCM_ETCD_DIAL_KEEP_ALIVE_TIME", "7s")
    settings, _ = load_settings(ToolSettings)
    assert settings.etcd.keepalive_time == timedelta(seconds=7)
