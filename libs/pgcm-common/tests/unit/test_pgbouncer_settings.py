from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import SecretStr, ValidationError

from pgcm_common.pgbouncer import PgBouncerEndpoint, PgBouncerSettings


def test_defaults_match_the_original() -> None:
    settings = PgBouncerSettings()
    assert (settings.host, settings.port) == ("/var/run/postgresql", 6432)
    assert (settings.user, settings.database) == ("pgbouncer", "pgbouncer")
    assert settings.password is None
    assert settings.connect_timeout == timedelta(seconds=5)


def test_endpoint_kind_follows_the_host() -> None:
    unix = PgBouncerEndpoint(host="/run/pgb", port=6433)
    tcp = PgBouncerEndpoint(host="10.0.0.1")
    assert unix.is_unix_socket
    assert str(unix) == "/run/pgb/.s.PGSQL.6433"
    assert not tcp.is_unix_socket
    assert str(tcp) == "10.0.0.1:6432"


def test_extra_endpoints_follow_the_primary_one() -> None:
    settings = PgBouncerSettings(
        host="/run/pgb1", extra_endpoints=(PgBouncerEndpoint(host="/run/pgb2"),)
    )
    assert [str(endpoint) for endpoint in settings.endpoints] == [
        "/run/pgb1/.s.PGSQL.6432",
        "/run/pgb2/.s.PGSQL.6432",
    ]


def test_duplicate_endpoints_are_refused() -> None:
    with pytest.raises(ValidationError, match="twice"):
        PgBouncerSettings(extra_endpoints=(PgBouncerEndpoint(),))


@pytest.mark.parametrize(
    "bad",
    [{"port": 0}, {"port": 70000}, {"unknown": 1}, {"connect_timeout": timedelta(0)}, {"user": ""}],
)
def test_invalid_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PgBouncerSettings.model_validate(bad)


def test_settings_are_frozen_and_hide_the_password() -> None:
    settings = PgBouncerSettings(password=SecretStr("hunter2"))
    with pytest.raises(ValidationError):
        settings.port = 1  # type: ignore[misc]
    assert "hunter2" not in repr(settings)
