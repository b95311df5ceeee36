"""Read what the lab needs from ``crm_mon --output-as=xml``: quorum, roles and scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import final
from xml.etree.ElementTree import Element  # the type only; parsing is defusedxml's

from defusedxml import ElementTree

from pgcm_lab.errors import LabError
from pgcm_lab.topology import RESOURCE

__all__ = ["ClusterView", "parse_crm_mon"]

_PROMOTED = frozenset({"Promoted", "Master"})
_UNPROMOTED = frozenset({"Unpromoted", "Slave"})
PROMOTED_SCORE = 1001


@final
@dataclass(frozen=True, slots=True)
class ClusterView:
    """One node's view of the cluster."""

    dc: str | None
    quorum: bool
    online: frozenset[str]
    promoted: tuple[str, ...]
    unpromoted: tuple[str, ...]
    scores: dict[str, int]
    failed: tuple[str, ...] = ()
    """Nodes whose instance crm_mon reports failed (in neither role above)."""

    @property
    def primary(self) -> str | None:
        """The single promoted node, or None when there is none or more than one."""
        return self.promoted[0] if len(self.promoted) == 1 else None

    def settled_on(self, node: str) -> bool:
        """The safe clear rule: ``node`` alone has 1001 and no online node is negative.

        Clearing a move earlier lets Pacemaker move the primary back (docs/lab.md).
        """
        top = [name for name, score in self.scores.items() if score == PROMOTED_SCORE]
        negative = [n for n, s in self.scores.items() if s < 0 and n in self.online]
        return top == [node] and not negative


def parse_crm_mon(xml: str, resource: str = RESOURCE) -> ClusterView:
    """Parse ``crm_mon -1 --output-as=xml``; failed instances count as neither role.

    Raises:
        LabError: the text is not crm_mon XML.
    """
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise LabError(f"crm_mon printed no XML: {xml[:200]!r}") from exc
    dc_el = root.find("summary/current_dc")
    present = dc_el is not None and dc_el.get("present") == "true"
    dc = dc_el.get("name") if present and dc_el is not None else None
    quorum = present and dc_el is not None and dc_el.get("with_quorum") == "true"
    online = frozenset(
        str(node.get("name"))
        for node in root.iterfind("nodes/node")
        if node.get("online") == "true"
    )
    promoted, unpromoted, failed = _roles(root, resource)
    scores: dict[str, int] = {}
    for node in root.iterfind("node_attributes/node"):
        for attr in node.iterfind("attribute"):
            if attr.get("name") == f"master-{resource}":
                try:
                    scores[str(node.get("name"))] = int(str(attr.get("value")))
                except ValueError:
                    continue
    return ClusterView(
        dc=dc,
        quorum=quorum,
        online=online,
        promoted=promoted,
        unpromoted=unpromoted,
        failed=failed,
        scores=scores,
    )


def _roles(
    root: Element, resource: str
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Return the nodes where ``resource`` runs promoted, unpromoted and failed, sorted."""
    roles: dict[str, list[str]] = {"promoted": [], "unpromoted": [], "failed": []}
    for rsc in root.iterfind(".//resource"):
        if rsc.get("id") != resource or rsc.get("active") != "true":
            continue
        names = [str(n.get("name")) for n in rsc.iterfind("node")]
        if rsc.get("failed") == "true":
            # In neither role: Pacemaker is about to recover it. PAF fails a promotion
            # on purpose when another standby has received more WAL, and the failed
            # instance stays "Promoted" until the other one is promoted instead.
            roles["failed"] += names
        elif rsc.get("role") in _PROMOTED:
            roles["promoted"] += names
        elif rsc.get("role") in _UNPROMOTED:
            roles["unpromoted"] += names
    promoted, unpromoted, failed = (tuple(sorted(roles[k])) for k in roles)
    return promoted, unpromoted, failed
