"""host:port parsing and the settings types built on it."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from pgcm_common.hostport import (
    ANY_HOST,
    BindAddress,
    HostPort,
    HostPortText,
    parse_bind_address,
    parse_host_port,
)


class _Model(BaseModel):
    endpoint: HostPortText | None = None
    bind: BindAddress | None = None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pg1:8080", HostPort("pg1", 8080)),
        ("127.0.0.1:1", HostPort("127.0.0.1", 1)),
        ("[::1]:50051", HostPort("::1", 50051)),
        ("[fe80::1%eth0]:65535", HostPort("fe80::1%eth0", 65535)),
        ("db.example:080", HostPort("db.example", 80)),
    ],
)
def test_endpoints_parse(text: str, expected: HostPort) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("pg1", "has no port"),
        ("", "expected host:port"),
        (":80", "has no host"),
        ("pg1:http", "is not a number"),
        ("pg1:", "is not a number"),
        ("pg1:-1", "is not a number"),
        ("pg1:\u00b2", "is not a number"),
        ("pg1:70000", "out of range 1-65535"),
        ("pg1:0", "out of range 1-65535"),
        ("::1:80", "needs brackets"),
        ("[::1:80", "unbalanced brackets"),
        ("::1]:80", "unbalanced brackets"),
        ("[[::1]]:80", "unbalanced brackets"),
        ("[pg1]:80", "not an IPv6 address"),
        ("pg1 :80", "without spaces"),
        (" pg1:80", "without spaces"),
    ],
)
def test_bad_endpoints_name_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_host_port(text)


@pytest.mark.parametrize(
    ("text", "expected", "bind_host"),
    [
        (":9187", HostPort("", 9187), ANY_HOST),
        ("127.0.0.1:0", HostPort("127.0.0.1", 0), "127.0.0.1"),
        ("[::]:8080", HostPort("::", 8080), "::"),
    ],
)
def test_bind_addresses_allow_every_host_and_any_port(
    text: str, expected: HostPort, bind_host: str
) -> None:
    parsed = parse_bind_address(text)
    assert (parsed, parsed.bind_host) == (expected, bind_host)


@pytest.mark.parametrize(("text", "problem"), [("9187", "has no port"), (":65536", "0-65535")])
def test_bad_bind_addresses_name_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_bind_address(text)


def test_settings_types_keep_the_text_and_report_the_problem() -> None:
    model = _Model(endpoint="[::1]:8080", bind=":0")
    assert (model.endpoint, model.bind) == ("[::1]:8080", ":0")
    with pytest.raises(ValidationError, match="out of range 1-65535"):
        _Model(endpoint="pg1:0")
    with pytest.raises(ValidationError, match="has no host"):
        _Model(endpoint=":8080")
    with pytest.raises(ValidationError, match="has no port"):
        _Model(bind="localhost")


_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
_HOSTS = st.one_of(
    st.lists(_LABEL, min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)


@given(host=_HOSTS, port=st.integers(1, 65535))
def test_endpoints_round_trip(host: str, port: int) -> None:
    address = HostPort(host, port)
    assert parse_host_port(str(address)) == address
    assert parse_bind_address(str(address)) == address


@given(host=st.one_of(st.just(""), _HOSTS), port=st.integers(0, 65535))
def test_bind_addresses_round_trip(host: str, port: int) -> None:
    address = HostPort(host, port)
    assert parse_bind_address(str(address)) == address


@given(st.text(max_size=40))
def test_anything_parses_or_raises_value_error(text: str) -> None:
    try:
        parsed = parse_bind_address(text)
    except ValueError:
        return
    assert 0 <= parsed.port <= 65535
    assert parse_bind_address(str(parsed)) == parsed
    if ":" in parsed.host:
        ipaddress.IPv6Address(parsed.host)
