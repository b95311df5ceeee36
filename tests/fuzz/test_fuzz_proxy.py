"""Bad etcd values and templates seen by pgcm-proxy: 0 crashes, 0 injected config lines.

An etcd value either raises :class:`~pgcm_proxy.errors.RejectedAddress` or, rendered into
a real pgbouncer.ini template, changes nothing but the host: no added line, and no
``=``, ``;``, ``#``, quote, brace or whitespace (each of which PgBouncer reads as
structure). An accepted host name is never an IPv4 address in one of the spellings
the C library's ``inet_aton`` reads (hex, octal, fewer than four parts), and a
refusal quotes at most a short prefix of the value. A template either raises
:class:`~pgcm_proxy.errors.TemplateError` or renders with exactly its own lines.
"""

from __future__ import annotations

import ipaddress
import socket
import string
from typing import Final

from hypothesis import example, given
from hypothesis import strategies as st

from pgcm_proxy.address import PrimaryAddress, parse_primary_address
from pgcm_proxy.errors import RejectedAddress, TemplateError
from pgcm_proxy.template import ConfigTemplate

TEMPLATE: Final = ConfigTemplate.parse(
    "[databases]\n"
    "app = host={{.Host}} port=5432 dbname=app\n"
    'quoted = host="{{ .Host }}" port=5432\n'
    "* = host={{.Host}}\n"
    "\n"
    "[pgbouncer]\n"
    "listen_port = 6432\n"
    "; primary: {{.Host}}\n"
)
BENIGN: Final = TEMPLATE.render(PrimaryAddress("benign"))
STRUCTURAL: Final = frozenset("=;#'\"{}[]%\\,") | frozenset(string.whitespace)
DANGEROUS: Final = "\n\r\t ;=#'\"{}[]%\\,\x00\x0b\x0c\u2028\u0085"

hostnames = st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?(\.[a-z0-9]{1,6}){0,3}\Z")
addresses = (
    st.ip_addresses().map(str)
    | hostnames
    | st.builds(lambda a, s: f"{a}%{s}", st.ip_addresses(v=6).map(str), st.text(max_size=8))
)


def _spliced(base: str, noise: str, position: int) -> str:
    position %= len(base) + 1
    return base[:position] + noise + base[position:]


values = (
    st.binary(max_size=300)
    | st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass"))
    | addresses.map(str.encode)
    | st.builds(
        _spliced,
        addresses,
        st.text(alphabet=DANGEROUS + string.ascii_letters, min_size=1, max_size=6),
        st.integers(0, 300),
    ).map(lambda t: t.encode("utf-8", "surrogatepass"))
)


def _render_or_reject(raw: bytes) -> str | None:
    try:
        address = parse_primary_address(raw)
    except RejectedAddress as exc:
        assert exc.reason  # noqa: PT017 - a property: rejection is one valid outcome
        return None
    return TEMPLATE.render(address)


@given(values)
@example(b"fe80::1%a=b;c")
@example(b"10.0.0.1\nadmin_users = evil")
@example(b"db.example.com port=1")
def test_accepted_etcd_values_change_only_the_host(raw: bytes) -> None:
    rendered = _render_or_reject(raw)
    if rendered is None:
        return
    host = parse_primary_address(raw).host
    assert not STRUCTURAL & set(host), f"structural character in accepted host {host!r}"
    assert rendered.count("\n") == BENIGN.count("\n")
    assert rendered.splitlines() == [
        line.replace("benign", host) for line in BENIGN.splitlines()
    ], "a line changed beyond its host"

    def keys(text: str) -> list[str]:
        return [line.split("=", 1)[0] for line in text.splitlines() if "=" in line]

    assert keys(rendered) == keys(BENIGN)


@given(addresses)
def test_plain_addresses_are_accepted_or_refused_without_crashing(text: str) -> None:
    raw = text.encode("utf-8", "surrogatepass")
    try:
        address = parse_primary_address(raw)
    except RejectedAddress:
        return
    # An accepted IP literal is the canonical text of the same address.
    try:
        parsed = ipaddress.ip_address(address.host)
    except ValueError:
        assert address.host == text.lower()
    else:
        assert parsed == ipaddress.ip_address(text)


def _ipv4_part(value: int, base: str) -> str:
    if base == "hex":
        return hex(value)
    if base == "octal":
        return "0" + format(value, "o")
    return str(value)


numeric_ipv4 = st.lists(
    st.tuples(st.integers(0, 2**32 - 1), st.sampled_from(("dec", "hex", "octal"))),
    min_size=1,
    max_size=4,
).map(lambda parts: ".".join(_ipv4_part(v, b) for v, b in parts))


def _inet_aton_reads(text: str) -> bool:
    try:
        socket.inet_aton(text)
    except OSError:
        return False
    return True


@given(numeric_ipv4 | addresses | values.map(lambda raw: raw.decode("latin-1")))
@example("0x7f000001")
@example("127.1")
@example("0177.0.0.1")
@example("1.0x1")
def test_an_accepted_host_name_is_never_a_numeric_ipv4_spelling(text: str) -> None:
    try:
        address = parse_primary_address(text.encode("utf-8", "surrogatepass"))
    except RejectedAddress as exc:
        assert len(str(exc)) < 200  # noqa: PT017 - a refusal quotes a short prefix only
        return
    try:
        ipaddress.ip_address(address.host)
    except ValueError:
        assert not _inet_aton_reads(address.host), address.host


template_texts = st.text(max_size=200) | st.lists(
    st.sampled_from(
        (
            *("{{.Host}}", "{{ .Host }}", "{{", "}}", "{{.host}}", "{{.Host", "{{{.Host}}}"),
            *("{{ .Port }}", "{{- .Host -}}", "\n", "[databases]", "app = host=", " ", "{"),
            *("{{\n.Host\n}}", "; comment", "* = host=", "x", "=", '"', "{{/* c */}}"),
        )
    ),
    max_size=20,
).map("".join)


@given(template_texts)
@example("{{ {{.Host}}")
@example("host={{.Host}} {{")
def test_templates_parse_or_fail_with_a_template_error(source: str) -> None:
    try:
        template = ConfigTemplate.parse(source, origin="fuzz.ini")
    except TemplateError as exc:
        assert "fuzz.ini" in str(exc)  # noqa: PT017 - a property: rejection is one valid outcome
        return
    rendered = template.render(PrimaryAddress("10.1.2.3"))
    placeholders = len(template.literal_parts) - 1
    assert placeholders >= 1
    assert "{{" not in rendered
    assert rendered.count("\n") == source.count("\n") - sum(
        part.count("\n") for part in _actions(source)
    )
    assert rendered.count("10.1.2.3") >= placeholders
    template.routed_databases()


def _actions(source: str) -> list[str]:
    # The text of every {{...}} action: what render() replaces (for the line count).
    out: list[str] = []
    start = source.find("{{")
    while start != -1:
        end = source.find("}}", start + 2)
        if end == -1:
            break
        out.append(source[start : end + 2])
        start = source.find("{{", end + 2)
    return out
