from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgcm_proxy.address import MAX_HOSTNAME_LENGTH, parse_primary_address
from pgcm_proxy.errors import RejectedAddress

# Values an attacker (or a confused script) could write into the etcd key. Each would
# change pgbouncer.ini beyond the host if it were written verbatim.
HOSTILE_VALUES: list[tuple[bytes | None, str]] = [
    (None, "missing"),
    (b"", "empty"),
    (b" 10.0.0.1", "whitespace_or_control"),
    (b"10.0.0.1\n", "whitespace_or_control"),
    (b"10.0.0.1\nauth_type = trust", "whitespace_or_control"),
    (b"10.0.0.1\r\n[pgbouncer]", "whitespace_or_control"),
    (b"10.0.0.1 port=6543", "whitespace_or_control"),
    (b"10.0.0.1\tport=1", "whitespace_or_control"),
    (b"host=evil", "not_an_address"),
    (b"10.0.0.1;drop", "not_an_address"),
    (b"'10.0.0.1'", "not_an_address"),
    (b'"10.0.0.1"', "not_an_address"),
    (b"a" * (MAX_HOSTNAME_LENGTH + 1), "too_long"),
    (b"db\x00.example", "whitespace_or_control"),
    (b"\xff\xfe", "not_ascii"),
    ("dé.example".encode(), "not_ascii"),
    (b"-db.example", "not_an_address"),
    (b"db-.example", "not_an_address"),
    (b"db..example", "not_an_address"),
    (b"db_1.example", "not_an_address"),
    (b"10.0.0.256", "not_an_address"),
    (b"{{.Host}}", "not_an_address"),
    (b"%", "not_an_address"),
    (b"a" * 64 + b".example", "not_an_address"),
    # IPv4 spellings inet_aton reads (hex, octal, short forms): not canonical, not names.
    (b"0x7f000001", "not_an_address"),
    (b"0X7F000001", "not_an_address"),
    (b"127.1", "not_an_address"),
    (b"0177.0.0.1", "not_an_address"),
    (b"0x7f.0.0.1", "not_an_address"),
    (b"10.0x1", "not_an_address"),
    (b"db.0x1f", "not_an_address"),
    (b"2130706433", "not_an_address"),
]


@pytest.mark.parametrize(("raw", "reason"), HOSTILE_VALUES)
def test_hostile_values_are_refused_with_a_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(RejectedAddress) as caught:
        parse_primary_address(raw)
    assert caught.value.reason == reason
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        (b"10.250.0.11", "10.250.0.11"),
        (b"::1", "::1"),
        (b"fd00:0:0:0::11", "fd00::11"),
        (b"pg1", "pg1"),
        (b"PG-1.db.Example.com", "pg-1.db.example.com"),
        (b"1a.example", "1a.example"),
        (b"0x7f.example", "0x7f.example"),
        (b"deadbeef", "deadbeef"),
    ],
)
def test_addresses_and_hostnames_are_accepted_in_canonical_form(raw: bytes, host: str) -> None:
    assert parse_primary_address(raw).host == host


@given(st.binary(max_size=300))
def test_any_accepted_value_is_a_single_safe_token(raw: bytes) -> None:
    try:
        address = parse_primary_address(raw)
    except RejectedAddress:
        return
    assert set(address.host) <= set("0123456789abcdefghijklmnopqrstuvwxyz.-:")
    assert len(address.host) <= MAX_HOSTNAME_LENGTH


def test_a_remembered_address_is_returned_again_and_a_refusal_is_never_remembered() -> None:
    first = parse_primary_address(b"10.1.2.3")
    assert parse_primary_address(b"10.1.2.3") is first  # the same validated value
    for _ in range(2):
        with pytest.raises(RejectedAddress) as refused:
            parse_primary_address(b"10.1.2.3\nlisten_port=1")
        assert refused.value.reason == "whitespace_or_control"


@pytest.mark.parametrize("raw", [b"a" * 100_000, b"\xff" * 100_000])
def test_a_refusal_quotes_only_a_short_escaped_prefix(raw: bytes) -> None:
    with pytest.raises(RejectedAddress) as caught:
        parse_primary_address(raw)
    assert len(str(caught.value)) < 200
    assert "(100000 bytes)" in str(caught.value)
