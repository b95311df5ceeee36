"""Parse ``crm_mon`` XML into a :class:`ClusterState`, or fail with a clear domain error.

Accepted dialects: Pacemaker ≥ 2.0 ``crm_mon --output-as=xml`` (root
``<pacemaker-result>``) and Pacemaker 1.1 ``crm_mon --as-xml`` (root ``<crm_mon>``).
Input is untrusted: it goes through defusedxml with DTDs forbidden (no entity expansion,
no external references), and any input that is not what Pacemaker prints raises
:class:`CrmMonParseError` or :class:`PromotableResourceNotFound`, never another exception.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import TypeVar
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from pgcm_common._pacemaker.errors import CrmMonParseError, PromotableResourceNotFound
from pgcm_common._pacemaker.model import (
    SCORE_INFINITY,
    Ban,
    ClusterState,
    Failure,
    FenceAction,
    FenceStatus,
    LegacyPgsqlAttributes,
    Node,
    NodeAttributes,
    OutputFormat,
    PromotionScore,
    ResourceInstance,
    Role,
)

__all__ = ["crm_mon_failure_detail", "parse_crm_mon", "parse_score"]

# crm_mon of a large cluster prints tens of kilobytes; anything this big is not crm_mon.
MAX_INPUT_BYTES = 16 * 1024 * 1024

_ROOTS = {"pacemaker-result": OutputFormat.OUTPUT_AS_XML, "crm_mon": OutputFormat.LEGACY_AS_XML}
_BOOLEANS = {"true": True, "false": False}
_SCORE = re.compile(r"[+-]?[0-9]{1,30}")
_INFINITY = re.compile(r"([+-]?)INFINITY", re.IGNORECASE)
# Anonymous clone instances are printed as "pgsqld" (2.x) or "pgsqld:0" (1.1, unique clones).
_INSTANCE_SUFFIX = re.compile(r":[0-9]+$")
_T = TypeVar("_T")


def parse_crm_mon(text: str | bytes, *, resource_id: str) -> ClusterState:
    """Parse one ``crm_mon`` XML snapshot.

    Args:
        text: the XML printed by ``crm_mon --output-as=xml`` or ``crm_mon --as-xml``.
        resource_id: the promotable clone's primitive (``pgsqld``) or the clone itself
            (``pgsql-ha``); the clone that contains it is found in the status.

    Returns:
        The typed, immutable snapshot.

    Raises:
        CrmMonParseError: the input is not well-formed crm_mon XML, carries a DTD or
            entities, lacks a required element or attribute, or holds a bad value.
        PromotableResourceNotFound: no promotable clone contains ``resource_id``.
    """
    root = _parse_xml(text)
    output_format = _ROOTS.get(root.tag)
    if output_format is None:
        raise CrmMonParseError(
            f"unexpected root element <{root.tag}>; expected <pacemaker-result> or <crm_mon>"
        )
    _check_status(root)
    # crm_mon prints each section once; a second copy (damaged or forged output) could
    # contradict the first, and reading only one of them would be a guess.
    for path in (
        "summary",
        "summary/current_dc",
        "nodes",
        "resources",
        "node_attributes",
        "fence_history",
    ):
        if len(root.findall(path)) > 1:
            raise CrmMonParseError(f"<{path}> is printed more than once")
    summary = _child(root, "summary")
    dc_element = _child(summary, "current_dc")
    dc_present = _bool(dc_element, "present")
    dc = _attr(dc_element, "name") if dc_present else None
    # Without a DC there is no quorum decision this node can vouch for.
    with_quorum = _bool(dc_element, "with_quorum") if dc_present else False
    nodes = _parse_nodes(_child(root, "nodes"))
    primitive, clone_id, instances = _parse_clone(root.find("resources"), resource_id)
    attributes = _parse_node_attributes(root.find("node_attributes"))
    fence_history = root.find("fence_history")
    return ClusterState(
        output_format=output_format,
        pacemaker_version=_pacemaker_version(root, dc_element, output_format),
        dc=dc,
        with_quorum=with_quorum,
        nodes=nodes,
        resource_id=primitive,
        clone_id=clone_id,
        instances=instances,
        promotion_scores=_promotion_scores(attributes, primitive),
        node_attributes=attributes,
        legacy_pgsql=_legacy_pgsql(attributes, primitive),
        failures=_parse_failures(root.find("failures")),
        bans=_parse_bans(root.find("bans")),
        last_change=_last_change(summary),
        resource_agent=_resource_agent(root.find("resources"), primitive),
        fencing=_parse_fencing(fence_history),
        fence_history_error=_fence_history_error(fence_history),
    )


def _last_change(summary: Element) -> str | None:
    element = summary.find("last_change")
    return None if element is None else element.get("time")


def _resource_agent(resources: Element | None, primitive: str) -> str | None:
    if resources is None:
        return None
    for element in resources.iter("resource"):
        agent = element.get("resource_agent")
        if agent and _primitive_id(element) == primitive:
            return agent
    return None


def parse_score(text: str) -> int:
    """Parse a Pacemaker score: an integer or ``[+-]INFINITY``, clamped to ±INFINITY.

    Raises:
        CrmMonParseError: ``text`` is not a score.
    """
    stripped = text.strip()
    infinity = _INFINITY.fullmatch(stripped)
    if infinity is not None:
        return -SCORE_INFINITY if infinity.group(1) == "-" else SCORE_INFINITY
    if _SCORE.fullmatch(stripped) is None:
        raise CrmMonParseError(f"score {text!r} is neither an integer nor [+-]INFINITY")
    return max(-SCORE_INFINITY, min(SCORE_INFINITY, int(stripped)))


def crm_mon_failure_detail(text: str | bytes) -> str:
    """Return what crm_mon's own XML says about a failure, or "" when it says nothing.

    ``crm_mon --output-as=xml`` prints ``<status code=… message=…><errors>`` on stdout when
    it fails; this turns that into one line for an error message. Never raises.
    """
    try:
        root = _parse_xml(text)
    except CrmMonParseError:
        return ""
    return _failure_detail_of(root)


def _parse_xml(text: str | bytes) -> Element:
    size = len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else len(text)
    if size > MAX_INPUT_BYTES:
        raise CrmMonParseError(f"input of {size} bytes exceeds the {MAX_INPUT_BYTES} byte limit")
    if not text.strip():
        raise CrmMonParseError("empty input")
    try:
        # forbid_dtd: crm_mon never prints a DTD; refusing it stops entity bombs up front.
        return fromstring(text, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise CrmMonParseError(f"forbidden XML construct: {exc}") from exc
    except ParseError as exc:
        raise CrmMonParseError(f"not well-formed XML: {exc}") from exc
    except (ValueError, LookupError) as exc:
        # expat rejects some encodings and lone surrogates with these instead of ParseError.
        raise CrmMonParseError(f"undecodable XML: {exc}") from exc


def _check_status(root: Element) -> None:
    status = root.find("status")
    if status is not None and status.get("code", "0") != "0":
        raise CrmMonParseError(f"crm_mon reported a failure: {_failure_detail_of(root)}")


def _failure_detail_of(root: Element) -> str:
    status = root.find("status")
    if status is None:
        return ""
    errors = [e.text.strip() for e in status.iter("error") if e.text and e.text.strip()]
    code, message = status.get("code", "?"), status.get("message", "")
    return "; ".join([f"crm_mon status {code} ({message})", *errors])


def _pacemaker_version(
    root: Element, dc_element: Element, output_format: OutputFormat
) -> str | None:
    if output_format is OutputFormat.LEGACY_AS_XML and root.get("version"):
        return root.get("version")
    # --output-as=xml carries no tool version; the DC's is "2.1.5-<build hash>".
    dc_version = dc_element.get("version")
    return dc_version.split("-", 1)[0] if dc_version else None


def _parse_nodes(element: Element) -> tuple[Node, ...]:
    nodes = tuple(
        Node(
            name=_attr(node, "name"),
            id=_attr(node, "id"),
            online=_bool(node, "online"),
            standby=_bool(node, "standby"),
            unclean=_bool(node, "unclean"),
            maintenance=_bool(node, "maintenance"),
            is_dc=_bool(node, "is_dc"),
            pending=_bool(node, "pending", default=False),
            shutdown=_bool(node, "shutdown", default=False),
        )
        for node in element.findall("node")
    )
    _reject_duplicates((n.name for n in nodes), "node")
    return nodes


def _parse_clone(
    resources: Element | None, resource_id: str
) -> tuple[str, str, tuple[ResourceInstance, ...]]:
    if resources is None:
        raise PromotableResourceNotFound(resource_id, "crm_mon printed no <resources>")
    matches = [c for c in resources.iter("clone") if _clone_matches(c, resource_id)]
    if not matches:
        raise PromotableResourceNotFound(resource_id, "no clone in the status contains it")
    if len(matches) > 1:
        ids = ", ".join(repr(c.get("id")) for c in matches)
        raise PromotableResourceNotFound(resource_id, f"several clones match: {ids}")
    clone = matches[0]
    clone_id = _attr(clone, "id")
    if not _bool(clone, "multi_state", default=False):
        raise PromotableResourceNotFound(resource_id, f"clone {clone_id!r} is not promotable")
    primitives = sorted({_primitive_id(r) for r in clone.iter("resource")})
    if resource_id in primitives:
        primitive = resource_id
    elif len(primitives) == 1:
        primitive = primitives[0]
    else:
        raise PromotableResourceNotFound(
            resource_id,
            f"clone {clone_id!r} holds several primitives {primitives}; name one of them",
        )
    instances = tuple(
        instance
        for element in clone.iter("resource")
        if _primitive_id(element) == primitive
        for instance in _parse_instances(element, primitive)
    )
    return primitive, clone_id, instances


def _clone_matches(clone: Element, resource_id: str) -> bool:
    if clone.get("id") == resource_id:
        return True
    return any(_primitive_id(r) == resource_id for r in clone.iter("resource"))


def _primitive_id(element: Element) -> str:
    return _INSTANCE_SUFFIX.sub("", _attr(element, "id"))


def _parse_instances(element: Element, primitive: str) -> Iterator[ResourceInstance]:
    role_text = _attr(element, "role")
    role = Role.from_crm_mon(role_text)
    if role is None:
        raise CrmMonParseError(f"resource {primitive!r} has unknown role {role_text!r}")
    node_names = [_attr(node, "name") for node in element.findall("node")]

    def instance(node: str | None) -> ResourceInstance:
        return ResourceInstance(
            resource_id=primitive,
            role=role,
            node=node,
            active=_bool(element, "active"),
            failed=_bool(element, "failed"),
            managed=_bool(element, "managed", default=True),
            blocked=_bool(element, "blocked", default=False),
        )

    if not node_names:
        yield instance(None)
    # An instance active on several nodes is listed once with several <node>s: keep each,
    # so a multiply-promoted resource shows up as several primaries instead of one.
    for name in node_names:
        yield instance(name)


def _parse_node_attributes(element: Element | None) -> tuple[NodeAttributes, ...]:
    if element is None:
        return ()
    result = tuple(
        NodeAttributes(
            node=_attr(node, "name"),
            items=tuple(
                (_attr(attribute, "name"), _attr(attribute, "value"))
                for attribute in node.findall("attribute")
            ),
        )
        for node in element.findall("node")
    )
    _reject_duplicates((a.node for a in result), "node_attributes node")
    return result


def _promotion_scores(
    attributes: tuple[NodeAttributes, ...], primitive: str
) -> tuple[PromotionScore, ...]:
    name = f"master-{primitive}"
    scores: list[PromotionScore] = []
    for node in attributes:
        value = node.get(name)
        if value is not None:
            scores.append(PromotionScore(node=node.node, score=_score_of(value, name, node.node)))
    return tuple(scores)


def _score_of(value: str, name: str, node: str) -> int:
    try:
        return parse_score(value)
    except CrmMonParseError as exc:
        raise CrmMonParseError(f"{name} of node {node!r}: {exc.problem}") from exc


def _legacy_pgsql(
    attributes: tuple[NodeAttributes, ...], primitive: str
) -> tuple[LegacyPgsqlAttributes, ...]:
    status_name, data_name = f"{primitive}-status", f"{primitive}-data-status"
    return tuple(
        LegacyPgsqlAttributes(
            node=node.node, status_raw=node.get(status_name), data_status_raw=node.get(data_name)
        )
        for node in attributes
        if node.get(status_name) is not None or node.get(data_name) is not None
    )


def _parse_failures(element: Element | None) -> tuple[Failure, ...]:
    if element is None:
        return ()
    return tuple(
        Failure(
            op_key=_attr(failure, "op_key"),
            node=_attr(failure, "node"),
            task=failure.get("task"),
            exitstatus=failure.get("exitstatus"),
            exitreason=failure.get("exitreason"),
            exitcode=_optional(failure, "exitcode", _int_of(failure, "exitcode")),
        )
        for failure in element.findall("failure")
    )


_FENCE_STATUSES = {status.value: status for status in FenceStatus}


def _parse_fencing(element: Element | None) -> tuple[FenceAction, ...]:
    if element is None:
        return ()
    return tuple(_fence_action(event) for event in element.findall("fence_event"))


def _fence_action(event: Element) -> FenceAction:
    status_text = _attr(event, "status")
    status = _FENCE_STATUSES.get(status_text)
    if status is None:
        raise CrmMonParseError(
            f"<fence_event> status {status_text!r} is not pending, failed or success"
        )
    return FenceAction(
        target=_attr(event, "target"),
        action=_attr(event, "action"),
        status=status,
        origin=_attr(event, "origin"),
        client=_attr(event, "client"),
        delegate=event.get("delegate"),
        completed=event.get("completed"),
        exit_reason=event.get("exit-reason"),
        extended_status=event.get("extended-status"),
    )


def _fence_history_error(element: Element | None) -> int | None:
    if element is None:
        return None
    code = _optional(element, "status", _int_of(element, "status"))
    return None if code in (None, 0) else code


def _parse_bans(element: Element | None) -> tuple[Ban, ...]:
    if element is None:
        return ()
    return tuple(
        Ban(
            id=_attr(ban, "id"),
            resource=_attr(ban, "resource"),
            node=_attr(ban, "node"),
            weight=_score_of(_attr(ban, "weight"), "ban weight", _attr(ban, "node")),
            # 2.1 prints both spellings; 1.1 only master_only.
            promoted_only=_bool(ban, "promoted-only", default=None)
            if ban.get("promoted-only") is not None
            else _bool(ban, "master_only", default=False),
        )
        for ban in element.findall("ban")
    )


def _child(element: Element, tag: str) -> Element:
    child = element.find(tag)
    if child is None:
        raise CrmMonParseError(f"<{element.tag}> has no <{tag}> element")
    return child


def _attr(element: Element, name: str) -> str:
    value = element.get(name)
    if value is None:
        raise CrmMonParseError(f"<{element.tag}> lacks the {name!r} attribute")
    return value


def _bool(element: Element, name: str, *, default: bool | None = None) -> bool:
    value = element.get(name)
    if value is None:
        if default is None:
            raise CrmMonParseError(f"<{element.tag}> lacks the {name!r} attribute")
        return default
    parsed = _BOOLEANS.get(value.lower())
    if parsed is None:
        raise CrmMonParseError(
            f"<{element.tag}> attribute {name!r} is {value!r}, not true or false"
        )
    return parsed


def _int_of(element: Element, name: str) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if _SCORE.fullmatch(value.strip()) is None:
            raise CrmMonParseError(
                f"<{element.tag}> attribute {name!r} is {value!r}, not an integer"
            )
        return int(value)

    return parse


def _optional(element: Element, name: str, parse: Callable[[str], _T]) -> _T | None:
    value = element.get(name)
    return None if value is None else parse(value)


def _reject_duplicates(names: Iterator[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise CrmMonParseError(f"{what} {name!r} is listed twice")
        seen.add(name)
