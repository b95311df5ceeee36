"""Bad crm_mon output: the parser and supervise's decision never crash, never publish wrongly.

Inputs are mutations of the real samples in libs/pgcm-common/tests/fixtures/pacemaker/:
structural edits (attribute values swapped for Pacemaker-ish or hostile text, attributes
and elements removed or duplicated) and byte-level damage. For every input:

* only :class:`~pgcm_common.errors.PacemakerError` may escape ``parse_crm_mon``;
* whenever :func:`~pgcm_supervise.publisher.decide` says ``Publish``, an oracle that reads
  the mutated XML on its own (stdlib ElementTree, not the parser under test) agrees that
  the partition has quorum and exactly one stable, healthy promoted instance, on that node.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final
from xml.etree import ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from pgcm_common.errors import PacemakerError
from pgcm_common.pacemaker import ClusterState, parse_crm_mon
from pgcm_supervise.publisher import Publish, decide

FIXTURES: Final = Path(__file__).parents[2] / "libs/pgcm-common/tests/fixtures/pacemaker"
RESOURCE_IDS: Final = ("pgsqld", "pgsql", "stateful", "pgsql-ha", "stateful-clone")
ROLES: Final = (
    *("Promoted", "Master", "Unpromoted", "Slave", "Promoting", "Demoting", "Started"),
    *("Stopped", "promoted", "MASTER", "Migrating", "Unknown", "Starting", "Stopping"),
)
BOOLEAN_TEXTS: Final = ("true", "false", "TRUE", "False", "", "yes", "1", "0", " true")
NAMES: Final = ("n1", "n2", "n3", "pcmk1", "", "n1 ", "N1", "n4")
INTERESTING: Final = (
    *ROLES,
    *BOOLEAN_TEXTS,
    *NAMES,
    *("pgsqld", "pgsqld:0", "pgsqld:1", "pgsql", "stateful", "pgsql-ha", "1", "2"),
    *("INFINITY", "-INFINITY", "+INFINITY", "1001", "-1", "99999999999999999999999999999"),
    *("master-pgsqld", "pgsql-data-status", "LATEST", "STREAMING|SYNC", "\x00", "&amp;"),
)
ATTRIBUTE_NAMES: Final = (
    *("role", "active", "failed", "online", "unclean", "pending", "standby", "shutdown"),
    *("with_quorum", "present", "name", "id", "multi_state", "value", "managed", "blocked"),
    *("maintenance", "is_dc", "status", "code", "version"),
)
_INSTANCE_SUFFIX: Final = re.compile(r":[0-9]+$")


def _resource_id_for(text: bytes) -> str:
    for candidate in RESOURCE_IDS:
        try:
            parse_crm_mon(text, resource_id=candidate)
        except PacemakerError:
            continue
        return candidate
    return RESOURCE_IDS[0]


SAMPLES: Final = {
    path.name: (text, _resource_id_for(text))
    for path in sorted(FIXTURES.glob("*.xml"))
    for text in [path.read_bytes()]
}
MALFORMED: Final = tuple(p.read_bytes() for p in sorted((FIXTURES / "malformed").iterdir()))


@final
@dataclass(frozen=True, slots=True)
class Oracle:
    """What the XML says about the primary, read without the parser under test."""

    publishable_node: str | None


def _true(element: ET.Element | None, name: str, *, default: bool = False) -> bool:
    if element is None:
        return False
    value = element.get(name)
    return default if value is None else value.lower() == "true"


def _false(element: ET.Element, name: str) -> bool:
    value = element.get(name)
    return value is not None and value.lower() == "false"


def oracle(text: bytes, primitive: str) -> Oracle:
    """Return the only node a correct publisher may publish for this XML, if any."""
    root = ET.fromstring(text)  # noqa: S314 - the parser under test accepted it: no DTD
    dc = root.find("summary/current_dc")
    if not (_true(dc, "present") and _true(dc, "with_quorum")):
        return Oracle(None)
    instances = [
        (resource, node.get("name"))
        for clone in root.iter("clone")
        for resource in clone.iter("resource")
        if _INSTANCE_SUFFIX.sub("", resource.get("id", "")) == primitive
        for node in resource.findall("node")
    ]
    roles = [((resource.get("role") or "").lower(), resource, name) for resource, name in instances]
    if any(role in {"promoting", "demoting"} for role, _, _ in roles):
        return Oracle(None)
    promoted = [
        (resource, name) for role, resource, name in roles if role in {"promoted", "master"}
    ]
    if len(promoted) != 1:
        return Oracle(None)
    resource, name = promoted[0]
    if not (_true(resource, "active") and _false(resource, "failed")):
        return Oracle(None)
    # Every listing of the node must say it is healthy: crm_mon never prints two
    # <nodes> sections, but if a damaged output does, none of them may contradict.
    nodes = [n for n in root.findall("nodes/node") if n.get("name") == name]
    healthy = bool(nodes) and all(
        _true(node, "online")
        and _false(node, "unclean")
        and not _true(node, "pending", default=False)
        for node in nodes
    )
    return Oracle(name if healthy else None)


def check(text: bytes, resource_id: str) -> ClusterState | None:
    """Parse and decide; only PacemakerError may escape; Publish must match the oracle."""
    try:
        state = parse_crm_mon(text, resource_id=resource_id)
    except PacemakerError:
        return None
    decision = decide(state)
    if isinstance(decision, Publish):
        expected = oracle(text, state.resource_id)
        assert expected.publishable_node is not None, f"published {decision.node.name} wrongly"
        assert decision.node.name == expected.publishable_node
        assert state.with_quorum
    return state


@st.composite
def mutated_sample(draw: st.DrawFn) -> tuple[bytes, str]:
    """Draw a real sample with 1 to 8 structural edits and maybe byte damage."""
    name = draw(st.sampled_from(sorted(SAMPLES)))
    text, resource_id = SAMPLES[name]
    root = ET.fromstring(text)  # noqa: S314 - our own fixture files
    for _ in range(draw(st.integers(1, 8))):
        parents = {child: parent for parent in root.iter() for child in parent}
        elements = list(parents)
        element = draw(st.sampled_from(elements))
        action = draw(st.sampled_from(("set", "set", "set", "delete_attr", "drop", "duplicate")))
        if action == "set":
            attribute = draw(st.sampled_from((*element.keys(), *ATTRIBUTE_NAMES)))
            value = draw(st.sampled_from(INTERESTING) | st.text(max_size=12))
            element.set(attribute, value)
        elif action == "delete_attr" and element.keys():
            element.attrib.pop(draw(st.sampled_from(sorted(element.keys()))))
        elif action == "drop":
            parents[element].remove(element)
        elif action == "duplicate":
            parent = parents[element]
            parent.insert(list(parent).index(element), copy.deepcopy(element))
    mutated = ET.tostring(root)
    if draw(st.booleans()) and draw(st.booleans()):
        position = draw(st.integers(0, len(mutated)))
        cut = draw(st.integers(0, 16))
        mutated = mutated[:position] + draw(st.binary(max_size=8)) + mutated[position + cut :]
    return mutated, draw(st.sampled_from((resource_id, resource_id, *RESOURCE_IDS)))


@given(mutated_sample())
def test_mutated_samples_never_crash_and_never_publish_a_wrong_primary(
    case: tuple[bytes, str],
) -> None:
    text, resource_id = case
    check(text, resource_id)


@given(
    st.sampled_from(sorted(SAMPLES) + [f"malformed/{i}" for i in range(len(MALFORMED))]),
    st.integers(0, 1 << 20),
    st.binary(max_size=64),
    st.integers(0, 64),
)
def test_byte_damaged_samples_raise_only_pacemaker_errors(
    name: str, position: int, insert: bytes, cut: int
) -> None:
    if name.startswith("malformed/"):
        text, resource_id = MALFORMED[int(name.split("/")[1])], "pgsqld"
    else:
        text, resource_id = SAMPLES[name]
    position %= len(text) + 1
    check(text[:position] + insert + text[position + cut :], resource_id)


@given(st.binary(max_size=512) | st.text(max_size=512), st.sampled_from(RESOURCE_IDS))
def test_arbitrary_input_raises_only_pacemaker_errors(text: bytes | str, resource_id: str) -> None:
    try:
        parse_crm_mon(text, resource_id=resource_id)
    except PacemakerError:
        return


def test_every_healthy_sample_is_published_by_the_oracle_too() -> None:
    # Guards the oracle itself: on the untouched samples it must agree with decide(),
    # or the property above could pass for the wrong reason.
    published = 0
    for name, (text, resource_id) in SAMPLES.items():
        state = check(text, resource_id)
        assert state is not None, name
        decision = decide(state)
        expected = oracle(text, state.resource_id).publishable_node
        assert (decision.node.name if isinstance(decision, Publish) else None) == expected, name
        published += isinstance(decision, Publish)
    assert published >= 5
