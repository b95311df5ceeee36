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


TLS = {"tls_cert_file": "/etc/pgcm/server.crt", "tls_key_file": "/etc/pgcm/server.key"}


def test_named_tokens_secure_an_exposed_address_and_stay_secret() -> None:
    s, _ = load_settings(
        SuperviseSettings,
        overrides={"bind_address": "0.0.0.0:8080", "tokens": {"ops": "t0ken"}, **TLS},
    )
    assert s.tokens["ops"].get_secret_value() == "t0ken"
    assert "t0ken" not in repr(s)


@pytest.mark.parametrize("address", [":8080", "0.0.0.0:8080", "10.0.0.1:8080", "pg01:8080"])
def test_exposed_bind_address_needs_authentication_or_insecure(address: str) -> None:
    with pytest.raises(ConfigError, match="not loopback"):
        load_settings(SuperviseSettings, overrides={"bind_address": address})
    allowed: list[dict[str, object]] = [
        {"insecure": True},
        {"insecure": True, "token": "t"},
        {"token": "t", **TLS},
        {"tls_client_ca_file": "/etc/pgcm/clients-ca.crt", **TLS},
    ]
    for extra in allowed:
        s, _ = load_settings(SuperviseSettings, overrides={"bind_address": address, **extra})
        assert s.bind_address == address


def test_exposed_bind_address_with_tls_but_no_authentication_is_refused() -> None:
    with pytest.raises(ConfigError, match="insecure") as caught:
        load_settings(SuperviseSettings, overrides={"bind_address": "0.0.0.0:8080", **TLS})
    assert "not authenticated" in str(caught.value)


@pytest.mark.parametrize("tokens", [{"token": "t"}, {"tokens": {"ops": "t0ken"}}])
def test_exposed_bind_address_with_a_token_but_no_tls_is_refused(
    tokens: dict[str, object],
) -> None:
    with pytest.raises(ConfigError, match="insecure") as caught:
        load_settings(SuperviseSettings, overrides={"bind_address": "10.0.0.1:8080", **tokens})
    assert "clear text" in str(caught.value)


def test_max_pause_expiry_defaults_to_five_minutes_and_must_be_positive() -> None:
    s, _ = load_settings(SuperviseSettings)
    assert s.max_pause_expiry == timedelta(minutes=5)
    with pytest.raises(ConfigError, match="max_pause_expiry"):
        load_settings(SuperviseSettings, overrides={"max_pause_expiry": "0s"})


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


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql:///postgres?host=/run/postgresql&user=postgres",
        "host=/run/postgresql user=postgres dbname=postgres",
        "postgresql://postgres:secret@127.0.0.1:5432/postgres?sslmode=require",
    ],
)
def test_postgres_dsn_accepts_the_documented_forms(dsn: str) -> None:
    s, _ = load_settings(SuperviseSettings, overrides={"postgres_dsn": dsn})
    assert s.postgres_dsn is not None
    assert s.postgres_dsn.get_secret_value() == dsn


@pytest.mark.parametrize(
    ("dsn", "problem"),
    [
        ("postgresql://postgres:secret@127.0.0.1/postgres?sslmode=allow", "sslmode 'allow'"),
        ("postgresql://postgres:secret@127.0.0.1/postgres?sslcrl=/x", "sslcrl not supported"),
        ("host=a,b password=secret", "more than one host"),
        ("mysql://postgres:secret@127.0.0.1/postgres", "postgresql://"),
    ],
)
def test_postgres_dsn_is_refused_at_load_without_showing_the_password(
    dsn: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match="postgres_dsn") as caught:
        load_settings(SuperviseSettings, overrides={"postgres_dsn": dsn})
    assert problem in str(caught.value)
    assert "secret" not in str(caught.value)
