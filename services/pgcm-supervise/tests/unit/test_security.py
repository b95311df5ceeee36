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


@pytest.mark.parametrize(
    "security",
    [
        SecurityOptions(insecure=True),
        SecurityOptions(tokens={"failover": SecretStr("x")}),
    ],
)
def test_exposed_listener_with_token_or_insecure_is_allowed(security: SecurityOptions) -> None:
    check_exposure("10.0.0.1", security)


def test_half_configured_tls_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        SecurityOptions(
            tls_key_file=None,
            tls_client_ca_file=None,
            tls_cert_file=Path("server.crt"),
        )
