"""libpq connection strings as pgcm's PostgreSQL client reads them."""

from __future__ import annotations

import re

import pytest

from pgcm_common._pgwire.dsn import DEFAULT_HOSTS, PostgresDsn, parse_dsn


def test_url_with_everything_in_the_authority() -> None:
    dsn = parse_dsn("postgresql://pgcm:s%40cret@db.example:6543/app?application_name=probe")
    assert dsn == PostgresDsn(
        hosts=("db.example",),
        port=6543,
        user="pgcm",
        dbname="app",
        password="s@cret",  # noqa: S106 - a fake secret in a parsed string
        parameters={"application_name": "probe"},
    )


def test_url_with_a_socket_directory_in_the_query_or_percent_encoded() -> None:
    from_query = parse_dsn("postgresql:///postgres?host=/run/postgresql&user=postgres")
    encoded = parse_dsn("postgres://postgres@%2Frun%2Fpostgresql/postgres")
    for dsn in (from_query, encoded):
        assert dsn.hosts == ("/run/postgresql",)
        assert dsn.endpoints[0].unix_socket_path == "/run/postgresql/.s.PGSQL.5432"
        assert dsn.user == "postgres"
        assert dsn.dbname == "postgres"
        assert dsn.password is None


def test_query_parameters_override_the_authority() -> None:
    dsn = parse_dsn("postgresql://a:b@h1:1/d1?host=h2&port=2&user=c&password=e&dbname=d2")
    assert (dsn.hosts, dsn.port, dsn.user, dsn.password, dsn.dbname) == (
        ("h2",),
        2,
        "c",
        "e",
        "d2",
    )


def test_ipv6_host() -> None:
    dsn = parse_dsn("postgresql://postgres@[::1]:5433/postgres")
    assert dsn.hosts == ("::1",)
    assert dsn.port == 5433


def test_key_value_form_with_quotes_and_escapes() -> None:
    dsn = parse_dsn(
        "host=/run/postgresql port = 5433 user=postgres password='it\\'s a secret' "
        "dbname=postgres sslmode=prefer connect_timeout=3 statement_timeout=1000"
    )
    assert dsn.hosts == ("/run/postgresql",)
    assert dsn.port == 5433
    assert dsn.password == "it's a secret"  # noqa: S105 - a fake secret
    assert dsn.sslmode == "prefer"
    assert dsn.connect_timeout == 3.0
    assert dsn.parameters == {"statement_timeout": "1000"}


def test_empty_string_means_every_default() -> None:
    dsn = parse_dsn("")
    assert dsn.hosts == DEFAULT_HOSTS
    assert dsn.port == 5432
    assert dsn.user is None
    assert dsn.sslmode == "disable"
    assert dsn.connect_timeout is None


def test_password_is_not_in_the_repr() -> None:
    assert "hunter2" not in repr(parse_dsn("postgresql://u:hunter2@h/d"))


@pytest.mark.parametrize("mode", ["disable", "prefer", "require", "verify-ca", "verify-full"])
def test_supported_sslmodes(mode: str) -> None:
    assert parse_dsn(f"host=h sslmode={mode}").sslmode == mode


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("host=h sslmode=allow", "sslmode 'allow' not supported"),
        ("host=h sslmode=on", "sslmode 'on' not supported"),
        ("postgresql://u@h1,h2/d", "more than one host"),
        ("host=h1,h2", "more than one host"),
        ("host=h port=0", "port '0'"),
        ("host=h port=http", "port 'http'"),
        ("postgresql://u@h:99999/d", "port '99999'"),
        ("host=h connect_timeout=soon", "connect_timeout 'soon'"),
        ("host=h connect_timeout=-1", "connect_timeout '-1'"),
        ("host=h hostaddr=127.0.0.1", "hostaddr not supported"),
        ("host=h target_session_attrs=read-write", "target_session_attrs not supported"),
        ("host=h sslkey=/k", "sslkey needs sslcert"),
        ("host=h dbname=a database=b", "give one"),
        ("host=h password='open", "unterminated quoted value of 'password'"),
        ("host", "without '='"),
        ("postgresql://u@[::1/d", "IPv6"),
        ("http://u@h/d", "postgresql://"),
    ],
)
def test_refused_strings_say_why(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_dsn(text)


def test_a_refused_string_never_shows_its_password() -> None:
    with pytest.raises(ValueError, match="sslmode") as caught:
        parse_dsn("postgresql://u:hunter2@h/d?sslmode=allow&password=hunter3")
    assert "hunter" not in str(caught.value)
