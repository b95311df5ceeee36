from __future__ import annotations

import argparse
import os
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import ClassVar, final

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from pgcm_common.errors import ConfigError
from pgcm_common.settings import (
    MIN_LEASE_TTL,
    ClusterSettings,
    Duration,
    InvalidSettings,
    LeaseTTL,
    PgcmSettings,
    PositiveDuration,
    add_settings_arguments,
    flag_overrides,
    format_duration,
    load_settings,
    original_keys_of,
    parse_duration,
    render_toml,
)


@final
class FakeEtcd(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    endpoints: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:2379"])
    password: SecretStr | None = None
    dial_timeout: Duration = timedelta(seconds=3)


@final
class DemoSettings(PgcmSettings):
    section: ClassVar[str] = "proxy"
    other_tables: ClassVar[frozenset[str]] = frozenset({"supervise", "failover"})
    original_keys: ClassVar[dict[str, str]] = {
        "etcd-endpoints": "etcd.endpoints",
        "pause-timeout-original": "pause_timeout",
    }
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    etcd: FakeEtcd = Field(default_factory=FakeEtcd)
    pause_timeout: Duration = Field(default=timedelta(seconds=5), description="Bound on PAUSE.")
    retries: int = 3
    insecure: bool = False
    node_addresses: dict[str, str] = Field(default_factory=dict)
    token: SecretStr | None = None
    metrics_address: str | None = None


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("PGCM_"):
            monkeypatch.delenv(name)


def _flags(*argv: str) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, DemoSettings)
    return flag_overrides(parser.parse_args(argv), DemoSettings)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pgcm.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5s", timedelta(seconds=5)),
        ("500ms", timedelta(milliseconds=500)),
        ("1m", timedelta(minutes=1)),
        ("1m30s", timedelta(seconds=90)),
        ("1h", timedelta(hours=1)),
        ("250us", timedelta(microseconds=250)),
        ("250\u00b5s", timedelta(microseconds=250)),
        ("1.5s", timedelta(milliseconds=1500)),
        ("1500ns", timedelta(microseconds=2)),
        ("2", timedelta(seconds=2)),
        ("0.25", timedelta(milliseconds=250)),
        ("0", timedelta(0)),
        ("1h2m3s4ms", timedelta(hours=1, minutes=2, seconds=3, milliseconds=4)),
    ],
)
def test_parse_duration_accepts_go_units_and_plain_seconds(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["5x", "s", "-1s", "1s 2s", "1.2.3s", "1d", "ms5"])
def test_parse_duration_rejects_garbage_and_negatives(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_parse_duration_rejects_empty() -> None:
    with pytest.raises(ValueError, match="empty"):
        parse_duration(" ")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=5), "5s"),
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(microseconds=1500), "1.5ms"),
        (timedelta(microseconds=250), "250us"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=1), "1h"),
        (timedelta(hours=25, milliseconds=1), "25h0.001s"),
    ],
)
def test_format_duration_writes_the_shortest_go_string(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=400)))
def test_format_then_parse_duration_round_trips(value: timedelta) -> None:
    assert parse_duration(format_duration(value)) == value


def test_defaults_apply_without_any_source() -> None:
    settings, loaded = load_settings(DemoSettings)
    assert loaded is None
    assert settings.pause_timeout == timedelta(seconds=5)
    assert settings.cluster.master_key == "/master"


def test_precedence_is_flags_then_env_then_toml_then_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(
        tmp_path, '[proxy]\npause_timeout = "1s"\nretries = 7\n[cluster]\nnamespace = "/t"\n'
    )
    settings, loaded = load_settings(DemoSettings, config_file=path)
    assert (settings.pause_timeout, settings.retries) == (timedelta(seconds=1), 7)
    assert loaded is not None
    assert len(loaded.sha256) == 64

    monkeypatch.setenv("PGCM_PAUSE_TIMEOUT", "2s")
    monkeypatch.setenv("PGCM_CLUSTER__NAMESPACE", "/env")
    settings, _ = load_settings(DemoSettings, config_file=path)
    assert settings.pause_timeout == timedelta(seconds=2)
    assert settings.cluster.namespace == "/env"
    assert settings.retries == 7  # untouched by env: the file still counts

    overrides = _flags("--pause-timeout", "250ms", "--cluster-namespace", "/flag")
    settings, _ = load_settings(DemoSettings, config_file=path, overrides=overrides)
    assert settings.pause_timeout == timedelta(milliseconds=250)
    assert settings.cluster.namespace == "/flag"


def test_nested_env_merges_with_toml_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, '[etcd]\nendpoints = ["http://a:2379"]\n')
    monkeypatch.setenv("PGCM_ETCD__DIAL_TIMEOUT", "750ms")
    settings, _ = load_settings(DemoSettings, config_file=path)
    assert settings.etcd.endpoints == ["http://a:2379"]
    assert settings.etcd.dial_timeout == timedelta(milliseconds=750)


def test_original_key_names_work_in_toml_flags_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, '[proxy]\netcd-namespace = "/postgres"\npause-timeout = "3s"\n')
    settings, _ = load_settings(DemoSettings, config_file=path)
    assert settings.cluster.namespace == "/postgres"
    assert settings.pause_timeout == timedelta(seconds=3)

    overrides = _flags(
        "--etcd-endpoints", "http://a:2379,http://b:2379", "--postgres-master-etcd-key", "/m"
    )
    settings, _ = load_settings(DemoSettings, overrides=overrides)
    assert settings.etcd.endpoints == ["http://a:2379", "http://b:2379"]
    assert settings.cluster.master_key == "/m"

    monkeypatch.setenv("PGCM_ETCD_POSTGRES_MASTER_KEY", "/legacy")
    settings, _ = load_settings(DemoSettings)
    assert settings.cluster.master_key == "/legacy"
    monkeypatch.setenv("PGCM_CLUSTER__MASTER_KEY", "/new")
    settings, _ = load_settings(DemoSettings)
    assert settings.cluster.master_key == "/new"  # the new name wins over the original's


def test_flags_parse_bools_lists_and_maps() -> None:
    overrides = _flags(
        "--insecure", "--node-addresses", "n1=10.0.0.1,n2=10.0.0.2", "--node-addresses", "n3=h3"
    )
    settings, _ = load_settings(DemoSettings, overrides=overrides)
    assert settings.insecure is True
    assert settings.node_addresses == {"n1": "10.0.0.1", "n2": "10.0.0.2", "n3": "h3"}


def test_other_services_tables_are_ignored(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[supervise]\nbogus = 1\n[failover]\nwhatever = "x"\n[pgbouncer]\nanything = 1\n'
        "[proxy]\nretries = 4\n",
    )
    settings, _ = load_settings(DemoSettings, config_file=path)
    assert settings.retries == 4


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[proxy]\nbogus = 1\n", "bogus"),
        ("[etcd]\nbogus = 1\n", "etcd.bogus"),
        ("[mystery]\nx = 1\n", "mystery"),
        ("toplevel = 1\n", "toplevel"),
        ('[proxy]\npause_timeout = "5x"\n', "pause_timeout"),
        ('[proxy]\nretries = "many"\n', "retries"),
        ('[proxy]\npause_timeout = "1s"\npause-timeout = "2s"\n', "proxy.pause-timeout"),
    ],
)
def test_bad_or_unknown_keys_raise_config_error_naming_the_key(
    tmp_path: Path, text: str, key: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(DemoSettings, config_file=path)
    assert info.value.key == key
    assert repr(key) in str(info.value)


def test_invalid_settings_lists_one_line_per_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGCM_PAUSE_TIMEOUT", "soon")
    monkeypatch.setenv("PGCM_RETRIES", "x")
    with pytest.raises(InvalidSettings) as info:
        load_settings(DemoSettings)
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("invalid setting 'pause_timeout': invalid duration 'soon'")
    assert lines[1].startswith("invalid setting 'retries':")


def test_unreadable_or_broken_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(DemoSettings, config_file=tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(DemoSettings, config_file=_write(tmp_path, "[proxy\n"))


def test_settings_are_frozen() -> None:
    settings, _ = load_settings(DemoSettings)
    with pytest.raises(ValueError, match="frozen"):
        settings.retries = 9  # type: ignore[misc]  # the point: assignment is refused


def test_render_toml_parses_and_reloads_into_the_same_settings(tmp_path: Path) -> None:
    overrides = _flags(
        "--pause-timeout",
        "1m30s",
        "--node-addresses",
        "n1=10.0.0.1,n.2=h",
        "--metrics-address",
        "127.0.0.1:9000",
    )
    settings, _ = load_settings(DemoSettings, overrides=overrides)
    text = render_toml(settings, header="demo")
    doc = tomllib.loads(text)
    assert doc["proxy"]["pause_timeout"] == "1m30s"
    assert "# Bound on PAUSE." in text
    reloaded, _ = load_settings(DemoSettings, config_file=_write(tmp_path, text))
    assert reloaded == settings


def test_render_toml_never_prints_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGCM_TOKEN", "hunter2")
    monkeypatch.setenv("PGCM_ETCD__PASSWORD", "swordfish")
    settings, _ = load_settings(DemoSettings)
    text = render_toml(settings)
    assert "hunter2" not in text
    assert "swordfish" not in text
    assert "# token = <redacted>" in text
    assert "token" not in tomllib.loads(text)["proxy"]
    monkeypatch.delenv("PGCM_TOKEN")
    monkeypatch.delenv("PGCM_ETCD__PASSWORD")
    reloaded, _ = load_settings(DemoSettings, config_file=_write(tmp_path, text))
    assert reloaded.token is None


class _Durations(BaseModel):
    interval: PositiveDuration = timedelta(seconds=1)
    ttl: LeaseTTL = timedelta(seconds=10)


@pytest.mark.parametrize("text", ["0s", "0", "0ms"])
def test_positive_duration_refuses_zero(text: str) -> None:
    with pytest.raises(ValidationError, match="must be positive"):
        _Durations(interval=text)


def test_positive_duration_takes_the_smallest_step() -> None:
    assert _Durations(interval="1us").interval == timedelta(microseconds=1)


@pytest.mark.parametrize("text", ["1s", "1999ms", "0s"])
def test_lease_ttl_refuses_less_than_etcds_minimum(text: str) -> None:
    with pytest.raises(ValidationError, match="at least 2s: etcd grants no shorter lease"):
        _Durations(ttl=text)


def test_lease_ttl_accepts_etcds_minimum_and_writes_back_as_text() -> None:
    model = _Durations(ttl="2s")
    assert model.ttl == MIN_LEASE_TTL == timedelta(seconds=2)
    assert model.model_dump(mode="json")["ttl"] == "2s"


def test_a_shared_table_brings_its_original_names_to_every_service_that_has_it() -> None:
    keys = original_keys_of(DemoSettings)
    assert keys["etcd-namespace"] == "cluster.namespace"
    assert keys["postgres-master-etcd-key"] == "cluster.master_key"
    assert keys["pause-timeout-original"] == "pause_timeout"
    settings, _ = load_settings(DemoSettings, overrides={})
    assert settings.cluster.namespace == ""
