from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgcm_common.errors import PacemakerError
from pgcm_common.pacemaker import ClusterState, parse_crm_mon

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pacemaker"
SAMPLES = sorted(FIXTURES.glob("*.xml"))
# Fragments that turn valid crm_mon XML into the kinds of damage seen in the wild or in
# attacks: truncation, entities, wrong values, duplicated and deleted markup.
NASTY = [
    "",
    "<",
    ">",
    "&",
    "&lol;",
    '"',
    "<!DOCTYPE x [<!ENTITY lol 'a'>]>",
    '<!ENTITY xxe SYSTEM "file:///etc/passwd">',
    "]]>",
    "INFINITY",
    "-",
    "true",
    "maybe",
    "Master",
    "Bogus",
    "\x00",
    "\udcff",
    "é",
    '<node name="n1" id="1"/>',
    "</clone>",
    "<resources/>",
    'value="x"',
    'role="Promoted"',
    'present="false"',
]


def _parse_or_domain_error(data: str | bytes) -> ClusterState | None:
    try:
        return parse_crm_mon(data, resource_id="pgsqld")
    except PacemakerError:
        return None


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise_anything_but_a_pacemaker_error(data: bytes) -> None:
    _parse_or_domain_error(data)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=2000))
def test_arbitrary_text_never_raises_anything_but_a_pacemaker_error(data: str) -> None:
    _parse_or_domain_error(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sample=st.sampled_from(SAMPLES),
    cuts=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=1),
            st.integers(min_value=0, max_value=40),
            st.sampled_from(NASTY) | st.text(max_size=8),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_fixture_xml_never_raises_anything_but_a_pacemaker_error(
    sample: Path, cuts: list[tuple[float, int, str]]
) -> None:
    text = sample.read_text()
    for position, length, replacement in cuts:
        at = int(position * len(text))
        text = text[:at] + replacement + text[at + length :]
    _parse_or_domain_error(text)


@settings(max_examples=100, deadline=None)
@given(
    sample=st.sampled_from(SAMPLES),
    position=st.floats(min_value=0, max_value=1),
)
def test_truncated_fixture_xml_never_raises_anything_but_a_pacemaker_error(
    sample: Path, position: float
) -> None:
    data = sample.read_bytes()
    _parse_or_domain_error(data[: int(position * len(data))])
