"""Read the move constraints that ``crm_mon`` does not show, from the CIB.

``crm_mon``'s ``<bans>`` lists only negative location constraints. The constraint a
switchover leaves behind, ``cli-prefer-<clone>`` (created by
``crm_resource --move --promoted``), is positive, so crm_mon never shows it; a killed
switchover would leave it unseen and Pacemaker pinned to one node. This module reads
the CIB's constraints section (``cibadmin --query --scope constraints``) and returns the
ids of every ``cli-prefer-*`` and ``cli-ban-*`` location constraint of the PostgreSQL
resource or its clone, so failover's pre-flight, ``status`` and ``cleanup`` see them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final, Protocol, final
from xml.etree.ElementTree import ParseError

import anyio
import structlog
from defusedxml import ElementTree

from pgcm_common.errors import PacemakerError
from pgcm_common.pacemaker import run_command

__all__ = [
    "CibConstraintReader",
    "CibConstraintsOptions",
    "ConstraintsUnreadable",
    "MoveConstraintSource",
    "StaticMoveConstraints",
    "parse_move_constraints",
]

log = structlog.get_logger("pgcm.supervise.constraints")

# The id prefixes crm_resource gives the constraints of --move/--ban (cleared by --clear).
_PREFIXES: Final = ("cli-prefer-", "cli-ban-")


class ConstraintsUnreadable(PacemakerError):
    """cibadmin failed, timed out or printed something that is not a constraints section."""


class MoveConstraintSource(Protocol):
    """Tells which crm_resource move/ban constraints exist."""

    async def move_constraints(self) -> tuple[str, ...]:
        """Return the ids of the move/ban constraints, sorted.

        Raises:
            ConstraintsUnreadable: the CIB could not be read.
        """
        ...


def parse_move_constraints(xml: bytes | str, resources: Collection[str]) -> tuple[str, ...]:
    """Return the sorted ids of ``cli-prefer-*``/``cli-ban-*`` constraints on ``resources``.

    ``resources`` holds the primitive and clone ids; empty means any resource.

    Raises:
        ConstraintsUnreadable: the text is not XML.
    """
    try:
        root = ElementTree.fromstring(xml)
    except ParseError as exc:
        raise ConstraintsUnreadable(f"cibadmin printed no XML: {exc}") from exc
    found = set()
    for element in root.iter("rsc_location"):
        ident = element.get("id", "")
        rsc = element.get("rsc", "")
        if ident.startswith(_PREFIXES) and (not resources or rsc in resources):
            found.add(ident)
    return tuple(sorted(found))


@final
@dataclass(frozen=True, slots=True)
class CibConstraintsOptions:
    """How to run ``cibadmin``.

    Attributes:
        resources: primitive and clone ids whose constraints count (empty: all).
        command_prefix: argv run before the tool (tests: nsenter into a lab node).
        executable: the ``cibadmin`` program.
        timeout: bound on one read.
    """

    resources: tuple[str, ...] = ()
    command_prefix: tuple[str, ...] = ()
    executable: str = "cibadmin"
    timeout: timedelta = field(default=timedelta(seconds=5))


@final
class CibConstraintReader:
    """The real :class:`MoveConstraintSource`: ``cibadmin --query --scope constraints``.

    Cancellation: the caller may cancel; ``run_command`` kills and reaps the tool.
    """

    def __init__(self, options: CibConstraintsOptions) -> None:
        self._options = options
        self._resources = set(options.resources)

    def add_resource(self, resource: str) -> None:
        """Also count constraints on ``resource`` (the clone found in crm_mon's output)."""
        self._resources.add(resource)

    async def move_constraints(self) -> tuple[str, ...]:
        """Return the ids of the move/ban constraints, sorted.

        Raises:
            ConstraintsUnreadable: cibadmin failed, timed out or printed no XML.
        """
        o = self._options
        argv = (*o.command_prefix, o.executable, "--query", "--scope", "constraints")
        try:
            with anyio.fail_after(o.timeout.total_seconds()):
                output = await run_command(argv)
        except TimeoutError as exc:
            raise ConstraintsUnreadable("cibadmin timed out") from exc
        except PacemakerError as exc:
            raise ConstraintsUnreadable(str(exc)) from exc
        if output.returncode != 0:
            raise ConstraintsUnreadable(
                f"cibadmin exited {output.returncode}: {output.stderr_text.strip()[:200]}"
            )
        return parse_move_constraints(output.stdout, self._resources)


@final
class StaticMoveConstraints:
    """A :class:`MoveConstraintSource` returning fixed ids (tests)."""

    def __init__(self, ids: tuple[str, ...] = ()) -> None:
        self.ids = ids

    async def move_constraints(self) -> tuple[str, ...]:
        """Return the configured ids."""
        await anyio.lowlevel.checkpoint()
        return self.ids
