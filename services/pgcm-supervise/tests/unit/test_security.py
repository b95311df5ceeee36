from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from pgcm_common.errors import ConfigError
from pgcm_supervise.security import SecurityOptions, check_exposure, is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"])
def test_loopback_hosts_are_recognised(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.1", "::", "db1.example"])
def test_exposed_listener_without_tls_or_token_is_refused_naming_insecure(host: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_exposure(host, SecurityOptions())
    assert caught.value.key == "insecure"


CERT = Path("server.crt")
KEY = Path("server.key")
CA = Path("clients-ca.crt")
TOKEN = {"failover": SecretStr("x")}


@pytest.mark.parametrize(
    "security",
    [
        SecurityOptions(insecure=True),
        SecurityOptions(insecure=True, tokens=TOKEN),
        SecurityOptions(tls_cert_file=CERT, tls_key_file=KEY, tokens=TOKEN),
        SecurityOptions(tls_cert_file=CERT, tls_key_file=KEY, tls_client_ca_file=CA),
    ],
    ids=["insecure", "insecure-token", "tls-token", "mutual-tls"],
)
def test_exposed_listener_with_authentication_or_insecure_is_allowed(
    security: SecurityOptions,
) -> None:
    check_exposure("10.0.0.1", security)


@pytest.mark.parametrize(
    "security",
    [
        SecurityOptions(tls_cert_file=CERT, tls_key_file=KEY),
        SecurityOptions(tokens=TOKEN),
    ],
    ids=["tls-without-authentication", "token-without-tls"],
)
def test_exposed_listener_with_tls_alone_or_a_clear_text_token_is_refused(
    security: SecurityOptions,
) -> None:
    with pytest.raises(ConfigError) as caught:
        check_exposure("0.0.0.0", security)
    assert caught.value.key == "insecure"


@pytest.mark.parametrize(
    "security",
    [SecurityOptions(), SecurityOptions(tokens=TOKEN)],
    ids=["nothing", "token-without-tls"],
)
def test_loopback_listener_needs_nothing(security: SecurityOptions) -> None:
    check_exposure("127.0.0.1", security)


def test_half_configured_tls_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        SecurityOptions(
            tls_key_file=None,
            tls_client_ca_file=None,
            tls_cert_file=Path("server.crt"),
        )
