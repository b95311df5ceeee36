from __future__ import annotations

import os
from datetime import timedelta

import pytest

from pgcm_common.errors import ConfigError
from pgcm_common.settings import load_settings
from pgcm_supervise.settings import SuperviseSettings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("PGCM_"):
            monkeypatch.delenv(name)


def test_defaults_listen_on_loopback_only() -> None:
    s, _ = load_settings(SuperviseSettings)
    assert s.bind_address == "127.0.0.1:8080"
    assert s.crm_mon_interval == timedelta(milliseconds=500)
    assert s.resource_id == "pgsqld"
    assert s.node_name
    assert str(s.nudge_socket) == "/run/pgcm/supervise.sock"
    assert s.postgres_dsn is None


def test_static_address_source_needs_a_map() -> None:
    with pytest.raises(ConfigError, match="needs node_addresses"):
        load_settings(SuperviseSettings, overrides={"address_source": "static"})


def test_status_interval_must_fit_in_the_lease() -> None:
    with pytest.raises(ConfigError, match="half of status_lease_ttl"):
        load_settings(
            SuperviseSettings, overrides={"status_interval": "6s", "status_lease_ttl": "10s"}
        )


def test_named_tokens_secure_an_exposed_address_and_stay_secret() -> None:
    s, _ = load_settings(
        SuperviseSettings,
        overrides={"bind_address": "0.0.0.0:8080", "tokens": {"ops": "t0ken"}},
    )
    assert s.tokens["ops"].get_secret_value() == "t0ken"
    assert "t0ken" not in repr(s)


@pytest.mark.parametrize("address", [":8080", "0.0.0.0:8080", "10.0.0.1:8080", "pg01:8080"])
def test_exposed_bind_address_needs_tls_token_or_insecure(address: str) -> None:
    with pytest.raises(ConfigError, match="not loopback"):
        load_settings(SuperviseSettings, overrides={"bind_address": address})
    for extra in ({"insecure": True}, {"token": "t"}):
        s, _ = load_settings(SuperviseSettings, overrides={"bind_address": address, **extra})
        assert s.bind_address == address


@pytest.mark.parametrize("address", ["127.0.0.1:1", "[::1]:8080", "localhost:8080"])
def test_loopback_bind_address_is_allowed_without_security(address: str) -> None:
    s, _ = load_settings(SuperviseSettings, overrides={"bind_address": address})
    assert s.bind_address == address


def test_tls_cert_needs_its_key() -> None:
    with pytest.raises(ConfigError, match="set together"):
        load_settings(SuperviseSettings, overrides={"tls_cert_file": "/c.pem"})


def test_original_pacemaker_names_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGCM_PACEMAKER_POLL_INTERVAL", "200ms")
    s, _ = load_settings(SuperviseSettings)
    assert s.crm_mon_interval == timedelta(milliseconds=200)
