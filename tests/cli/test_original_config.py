"""Every service reads the original's flat ``config.toml`` and environment names unchanged.

The file below holds every key the original read (the names its code asked viper for,
also those it declared as flags but never read), with values unlike pgcm's defaults so
that each mapping shows in ``show-config``.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
import tomli_w

from pgcm_common.settings import PgcmSettings, load_settings
from pgcm_common.settings.convert import installed_services
from pgcm_failover.cli import main as failover_main
from pgcm_failover.settings import FailoverSettings
from pgcm_proxy.cli import main as proxy_main
from pgcm_proxy.settings import ProxySettings
from pgcm_supervise.cli import main as supervise_main
from pgcm_supervise.settings import SuperviseSettings

ORIGINAL: Final[dict[str, object]] = {
    "config-file": "/etc/pgsql-cluster-manager/config.toml",
    "etcd-namespace": "/postgres",
    "etcd-postgres-master-key": "/primary",
    "etcd-endpoints": ["http://10.0.0.11:2379", "http://10.0.0.12:2379"],
    "etcd-dial-timeout": "3s",
    "etcd-timeout": "4s",
    "etcd-dial-keep-alive-time": "20s",
    "etcd-keep-alive-time": "30s",
    "etcd-dial-keep-alive-timeout": "3s",
    "etcd-keep-alive-timeout": "5s",
    "etcd-get-timeout": "5s",
    "etcd-stream-poll-interval": "45s",
    "pgbouncer-user": "bouncer-admin",
    "pgbouncer-password": "original-Secret-4b1d",
    "pgbouncer-database": "pgbouncer",
    "pgbouncer-socket-dir": "/run/pgbouncer",
    "pgbouncer-port": "6433",
    "pgbouncer-timeout": "7s",
    "pgbouncer-config-file": "/etc/pgb/pgbouncer.ini",
    "pgbouncer-config-template-file": "/etc/pgb/pgbouncer.ini.template",
    "pgbouncer-retry-timeout": "2s",
    "pgbouncer-retry-interval": "5s",
    "bind-address": "127.0.0.1:18080",
    "host-key-update-retry-interval": "2s",
    "pacemaker-poll-interval": "750ms",
    "pacemaker-get-timeout": "4s",
    "postgres-master-crm-xpath": "//node/instance_attributes/nvpair[@value='LATEST']/../..",
    "failover-api-endpoints": ["pg01:8080", "pg02:8080", "pg03:8080"],
    "health-check-timeout": "3s",
    "lock-timeout": "6s",
    "pause-timeout": "4s",
    "pause-expiry": "30s",
    "resume-timeout": "6s",
    "pacemaker-timeout": "15s",
}
EXPECTED: Final[dict[str, dict[str, object]]] = {
    "cluster": {"namespace": "/postgres", "master_key": "/primary"},
    "etcd": {
        "endpoints": ["http://10.0.0.11:2379", "http://10.0.0.12:2379"],
        "dial_timeout": "3s",
        "request_timeout": "4s",
        "keepalive_time": "20s",
        "keepalive_timeout": "3s",
    },
    "pgbouncer": {
        "user": "bouncer-admin",
        "database": "pgbouncer",
        "host": "/run/pgbouncer",
        "port": 6433,
        "connect_timeout": "7s",
    },
    "proxy": {
        "pgbouncer_config_file": "/etc/pgb/pgbouncer.ini",
        "pgbouncer_config_template_file": "/etc/pgb/pgbouncer.ini.template",
        "poll_interval": "45s",
        "retry_max_interval": "2s",
    },
    "supervise": {
        "bind_address": "127.0.0.1:18080",
        "retry_interval": "2s",
        "crm_mon_interval": "750ms",
        "crm_mon_timeout": "4s",
    },
    "failover": {
        "endpoints": ["pg01:8080", "pg02:8080", "pg03:8080"],
        "health_check_timeout": "3s",
        "lock_timeout": "6s",
        "pause_timeout": "4s",
        "pause_expiry": "30s",
        "resume_timeout": "6s",
        "pacemaker_timeout": "15s",
    },
}
IGNORED: Final = [
    "config-file",
    "etcd-get-timeout",
    "etcd-keep-alive-time",
    "etcd-keep-alive-timeout",
    "pgbouncer-retry-interval",
    "postgres-master-crm-xpath",
]


@dataclass(frozen=True, slots=True)
class Service:
    prog: str
    main: Callable[[Sequence[str]], int]
    settings: type[PgcmSettings]
    tables: frozenset[str]


SERVICES: Final = [
    Service(
        "pgcm-proxy",
        proxy_main,
        ProxySettings,
        frozenset({"cluster", "etcd", "pgbouncer", "proxy"}),
    ),
    Service(
        "pgcm-supervise",
        supervise_main,
        SuperviseSettings,
        frozenset({"cluster", "etcd", "pgbouncer", "supervise"}),
    ),
    Service(
        "pgcm-failover",
        failover_main,
        FailoverSettings,
        frozenset({"cluster", "etcd", "failover"}),
    ),
]


@pytest.fixture(params=SERVICES, ids=[s.prog for s in SERVICES])
def service(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Service:
    for name in list(os.environ):
        if name.upper().startswith("PGCM_"):
            monkeypatch.delenv(name)
    chosen: Service = request.param
    return chosen


def _write(tmp_path: Path, doc: dict[str, object], name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(tomli_w.dumps(doc))
    return path


def _log_events(stderr: str) -> list[dict[str, object]]:
    events = []
    for line in stderr.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            events.append(record)
    return events


def test_show_config_of_the_original_file_shows_every_key_mapped(
    service: Service, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, ORIGINAL)
    assert service.main(["show-config", "--config-file", str(path)]) == 0
    out = capsys.readouterr().out
    shown = tomllib.loads(out)
    assert set(shown) == service.tables
    for table in service.tables:
        for key, value in EXPECTED[table].items():
            assert (table, key, shown[table][key]) == (table, key, value)
    if "pgbouncer" in service.tables:
        assert "# password = <redacted>" in out
    assert "original-Secret-4b1d" not in out


def test_the_originals_dead_keys_give_one_warning_naming_them(
    service: Service, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, ORIGINAL)
    argv = ["--log-format", "json", "show-config", "--config-file", str(path)]
    assert service.main(argv) == 0
    warnings = [
        e for e in _log_events(capsys.readouterr().err) if e.get("event") == "config.keys_ignored"
    ]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"
    assert warnings[0]["keys"] == IGNORED
    reasons = warnings[0]["reasons"]
    assert isinstance(reasons, dict)
    assert "etcd-dial-keep-alive-time" in reasons["etcd-keep-alive-time"]


def test_a_file_without_dead_keys_gives_no_warning(
    service: Service, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live = {k: v for k, v in ORIGINAL.items() if k not in IGNORED}
    path = _write(tmp_path, live)
    argv = ["--log-format", "json", "show-config", "--config-file", str(path)]
    assert service.main(argv) == 0
    events = {e.get("event") for e in _log_events(capsys.readouterr().err)}
    assert "config.keys_ignored" not in events
    assert "config_file.original_format" in events


@pytest.mark.parametrize(
    "case",
    [
        ("etcd-endpoint", ["http://10.0.0.11:2379"], "unknown top-level key"),
        ("pgbouncer-retry-max-interval", "5s", "unknown top-level key"),
        ("pause-timeout", 5, "no unit; the original read it as nanoseconds"),
        ("pause-timeout", "-5s", "must not be negative"),
        ("pgbouncer-port", "sixty", "must be a port number"),
        ("etcd-endpoints", 2379, "must be a list of strings"),
    ],
)
def test_a_key_the_original_never_had_or_a_bad_value_exits_2_naming_the_key(
    service: Service,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, object, str],
) -> None:
    key, value, problem = case
    path = _write(tmp_path, {**ORIGINAL, key: value})
    assert service.main(["show-config", "--config-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{service.prog}: invalid setting {key!r}: ")
    assert problem in err


def test_the_converted_file_gives_the_same_settings_as_the_original(
    service: Service, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = _write(tmp_path, ORIGINAL)
    assert service.main(["convert-config", str(original)]) == 0
    converted_text = capsys.readouterr().out
    converted = tmp_path / "pgcm.toml"
    converted.write_text(converted_text)
    assert set(tomllib.loads(converted_text)) == set(EXPECTED)  # one file for all three
    from_original, _ = load_settings(service.settings, config_file=original)
    from_converted, loaded = load_settings(service.settings, config_file=converted)
    assert from_converted == from_original
    assert loaded is not None
    assert not loaded.original_format


def test_every_service_names_its_settings_model_for_convert_config() -> None:
    # Installed together (the workspace), convert-config converts every service's keys.
    assert installed_services() == (FailoverSettings, ProxySettings, SuperviseSettings)


def test_convert_config_refuses_a_file_that_is_not_the_originals(
    service: Service, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, {"cluster": {"namespace": "/postgres"}}, "pgcm.toml")
    assert service.main(["convert-config", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"{service.prog}: invalid setting 'cluster': ")


def test_the_originals_environment_names_set_the_same_settings(
    service: Service, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # viper split a list from the environment on whitespace; commas work too.
    monkeypatch.setenv("PGCM_ETCD_ENDPOINTS", "http://10.0.0.11:2379 http://10.0.0.12:2379")
    monkeypatch.setenv("PGCM_ETCD_NAMESPACE", "/postgres")
    monkeypatch.setenv("PGCM_ETCD_TIMEOUT", "4s")
    monkeypatch.setenv("PGCM_ETCD_POSTGRES_MASTER_KEY", "")  # empty is unset, as in viper
    monkeypatch.setenv("PGCM_PGBOUNCER_SOCKET_DIR", "/run/pgbouncer")
    monkeypatch.setenv("PGCM_PGBOUNCER_PORT", "6433")
    monkeypatch.setenv("PGCM_ETCD_STREAM_POLL_INTERVAL", "45s")
    monkeypatch.setenv("PGCM_PACEMAKER_POLL_INTERVAL", "750ms")
    monkeypatch.setenv("PGCM_FAILOVER_API_ENDPOINTS", "pg01:8080,pg02:8080 pg03:8080")
    monkeypatch.setenv("PGCM_POSTGRES_MASTER_CRM_XPATH", "//node")
    assert service.main(["--log-format", "json", "show-config"]) == 0
    captured = capsys.readouterr()
    shown = tomllib.loads(captured.out)
    assert shown["etcd"]["endpoints"] == EXPECTED["etcd"]["endpoints"]
    assert shown["etcd"]["request_timeout"] == "4s"
    assert shown["cluster"] == {"namespace": "/postgres", "master_key": "/master"}
    if "pgbouncer" in service.tables:
        assert (shown["pgbouncer"]["host"], shown["pgbouncer"]["port"]) == ("/run/pgbouncer", 6433)
    if "proxy" in service.tables:
        assert shown["proxy"]["poll_interval"] == "45s"
    if "supervise" in service.tables:
        assert shown["supervise"]["crm_mon_interval"] == "750ms"
    if "failover" in service.tables:
        assert shown["failover"]["endpoints"] == EXPECTED["failover"]["endpoints"]
    warnings = [e for e in _log_events(captured.err) if e.get("event") == "config.keys_ignored"]
    assert [w["keys"] for w in warnings] == [["PGCM_POSTGRES_MASTER_CRM_XPATH"]]


def test_pgcm_tables_may_sit_beside_the_original_keys_but_not_repeat_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.upper().startswith("PGCM_"):
            monkeypatch.delenv(name)
    exposed = {**ORIGINAL, "bind-address": ":8080"}
    path = _write(tmp_path, {**exposed, "supervise": {"insecure": True}})
    assert supervise_main(["show-config", "--config-file", str(path)]) == 0
    shown = tomllib.loads(capsys.readouterr().out)["supervise"]
    assert (shown["bind_address"], shown["insecure"]) == (":8080", True)
    path = _write(tmp_path, {**exposed, "supervise": {"bind_address": "127.0.0.1:1"}})
    assert supervise_main(["show-config", "--config-file", str(path)]) == 2
    assert capsys.readouterr().err == (
        "pgcm-supervise: invalid setting 'bind-address': sets the same setting as "
        "[supervise] bind_address\n"
    )
