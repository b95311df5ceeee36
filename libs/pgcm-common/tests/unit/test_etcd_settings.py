from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError
from structlog.testing import capture_logs

from pgcm_common.etcd import EtcdEndpoint, EtcdSettings, open_etcd


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:2379", EtcdEndpoint("127.0.0.1", 2379, tls=False)),
        ("etcd-1", EtcdEndpoint("etcd-1", 2379, tls=False)),
        ("http://10.0.0.1:22379", EtcdEndpoint("10.0.0.1", 22379, tls=False)),
        ("https://etcd.example:2379/", EtcdEndpoint("etcd.example", 2379, tls=True)),
        ("[::1]:2379", EtcdEndpoint("::1", 2379, tls=False)),
    ],
)
def test_endpoint_parses_host_port_and_urls(text: str, expected: EtcdEndpoint) -> None:
    assert EtcdEndpoint.parse(text) == expected


def test_endpoint_target_brackets_ipv6() -> None:
    assert EtcdEndpoint.parse("[::1]:2379").target == "[::1]:2379"


@pytest.mark.parametrize("text", ["", "unix:///x", "http://h:99999", "http://h:1/path", "://"])
def test_endpoint_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        EtcdEndpoint.parse(text)


def test_defaults_point_at_local_etcd_with_safe_keepalive() -> None:
    settings = EtcdSettings()
    assert settings.endpoints == ["127.0.0.1:2379"]
    assert not settings.use_tls
    assert settings.keepalive_time >= timedelta(seconds=5)
    assert settings.keepalive_timeout < settings.keepalive_time


def test_keepalive_more_often_than_five_seconds_is_rejected() -> None:
    with pytest.raises(ValidationError, match="at least 5s"):
        EtcdSettings(keepalive_time=timedelta(seconds=4))


def test_unknown_keys_are_rejected() -> None:
    with pytest.raises(ValidationError, match="extra"):
        EtcdSettings.model_validate({"endpoint": ["x"]})


def test_username_without_password_is_rejected() -> None:
    with pytest.raises(ValidationError, match="together"):
        EtcdSettings(username="root")


def test_client_cert_without_key_is_rejected() -> None:
    with pytest.raises(ValidationError, match="together"):
        EtcdSettings(cert_file=Path("/c.pem"))


@pytest.mark.parametrize(
    "endpoints", [["127.0.0.1:2379"], ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]]
)
def test_client_cert_without_tls_is_rejected_naming_the_keys(endpoints: list[str]) -> None:
    # It used to be ignored: the connection was plain text although a cert was given.
    with pytest.raises(ValidationError, match="cert_file and key_file need TLS"):
        EtcdSettings(endpoints=endpoints, cert_file=Path("/c.pem"), key_file=Path("/k.pem"))


@pytest.mark.parametrize(
    "tls", [{"ca_file": Path("/ca.pem")}, {"endpoints": ["https://10.0.0.1:2379"]}]
)
def test_client_cert_with_tls_is_accepted(tls: dict[str, object]) -> None:
    settings = EtcdSettings(cert_file=Path("/c.pem"), key_file=Path("/k.pem"), **tls)
    assert settings.use_tls


def test_bad_endpoint_is_rejected_naming_it() -> None:
    with pytest.raises(ValidationError, match="ftp"):
        EtcdSettings(endpoints=["ftp://h:1"])


def test_ca_file_or_https_endpoint_turns_tls_on() -> None:
    assert EtcdSettings(ca_file=Path("/ca.pem")).use_tls
    assert EtcdSettings(endpoints=["https://h:2379"]).use_tls


def test_password_is_secret() -> None:
    settings = EtcdSettings(username="root", password=SecretStr("hunter2"))
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in settings.model_dump_json()


def test_settings_are_frozen() -> None:
    settings = EtcdSettings()
    with pytest.raises(ValidationError):
        settings.username = "x"  # type: ignore[misc]  # the point: frozen


def test_hedge_delay_defaults_to_half_a_second_and_must_be_positive() -> None:
    assert EtcdSettings().hedge_delay == timedelta(milliseconds=500)
    assert EtcdSettings(hedge_delay=timedelta(milliseconds=200)).hedge_delay == timedelta(
        milliseconds=200
    )
    with pytest.raises(ValidationError, match="must be positive"):
        EtcdSettings(hedge_delay=timedelta(0))


@pytest.mark.parametrize(
    ("settings", "warned"),
    [
        (EtcdSettings(username="root", password=SecretStr("pw")), True),
        (
            EtcdSettings(
                endpoints=["https://127.0.0.1:2379"], username="root", password=SecretStr("pw")
            ),
            False,
        ),
        (EtcdSettings(), False),
    ],
    ids=["password-plain-text", "password-tls", "no-password"],
)
async def test_a_password_sent_without_tls_is_warned_about(
    settings: EtcdSettings, *, warned: bool
) -> None:
    # Nothing connects until the first request: no etcd is needed to see the warning.
    with capture_logs() as logs:
        async with open_etcd(settings):
            pass
    events = [e for e in logs if e["event"] == "etcd.auth.plaintext"]
    assert [e["log_level"] for e in events] == (["warning"] if warned else [])
    assert "'pw'" not in repr(events)
