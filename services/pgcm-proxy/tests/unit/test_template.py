from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgcm_common.errors import ConfigError
from pgcm_proxy.address import parse_primary_address
from pgcm_proxy.errors import TemplateError
from pgcm_proxy.template import ConfigTemplate

ORIGINAL_TEMPLATE = """[databases]
postgres = host={{.Host}} port=5432 dbname=postgres
other = host={{ .Host }} port=5432 dbname=other

[pgbouncer]
listen_port = 6432
"""


def test_both_placeholder_spellings_of_the_original_are_rendered() -> None:
    template = ConfigTemplate.parse(ORIGINAL_TEMPLATE)
    rendered = template.render(parse_primary_address(b"10.0.0.2"))
    assert "postgres = host=10.0.0.2 port=5432" in rendered
    assert "other = host=10.0.0.2 port=5432" in rendered
    assert "{{" not in rendered


@pytest.mark.parametrize(
    ("source", "line", "problem"),
    [
        ("a\nhost={{.Port}}\n", 2, "unsupported action"),
        ("host={{.Host}}\n{{ if .Host }}x{{ end }}\n", 2, "unsupported action"),
        ("host={{.Host}}\nport={{", 2, "unclosed"),
        ("host={{Host}}", 1, "unsupported action"),
        ("host={{.Host}} {{.Host | printf}}", 1, "unsupported action"),
    ],
)
def test_broken_templates_name_the_line_and_the_problem(
    source: str, line: int, problem: str
) -> None:
    with pytest.raises(TemplateError) as caught:
        ConfigTemplate.parse(source, origin="/etc/pgbouncer/pgbouncer.ini.template")
    assert caught.value.line == line
    assert problem in str(caught.value)
    assert f"/etc/pgbouncer/pgbouncer.ini.template:{line}" in str(caught.value)


def test_a_template_without_placeholder_is_refused_as_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"no \{\{.Host\}\} placeholder"):
        ConfigTemplate.parse("[databases]\npostgres = host=10.0.0.1\n")


@given(st.text(max_size=200))
def test_parsing_arbitrary_text_either_succeeds_or_raises_template_error(source: str) -> None:
    try:
        template = ConfigTemplate.parse(source)
    except TemplateError:
        return
    rendered = template.render(parse_primary_address(b"10.9.9.9"))
    assert rendered.count("10.9.9.9") >= source.count("10.9.9.9") + 1


def test_routed_databases_are_the_database_lines_holding_the_placeholder() -> None:
    template = ConfigTemplate.parse(
        "[databases]\n"
        "app = host={{.Host}} port=5432\n"
        '"quoted" = host={{ .Host }}\n'
        "; old = host={{.Host}}\n"
        "* = host={{.Host}}\n"
        "static = host=10.0.0.9\n"
        "[pgbouncer]\n"
        "listen_addr = {{.Host}}\n"
    )
    assert template.routed_databases() == frozenset({"app", "quoted"})
