"""Where a planned switchover's time goes inside Pacemaker and PAF, from their own logs.

A switchover is ``crm_resource --move`` writing a ``cli-prefer-<clone>`` constraint,
then one transition run by the DC: notifications to every node before the demote, the
demote (PAF stops PostgreSQL and starts it again as a standby), notifications after it
and before the promote (PAF records each standby's WAL position to elect the best
one), then the promote. pgcm holds clients from before the move until the new primary
is published and acknowledged, so this chain is the floor under the paused time.

:func:`promotion_chains` reads the merged ``pacemaker.log`` of every node and returns
one :class:`PromotionChain` per move that reached a successful promote.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, final

from pgcm_lab.topology import CLONE, RESOURCE

__all__ = ["FAILOVER_MARKS", "STEPS", "PromotionChain", "failover_marks", "promotion_chains"]

# "Nov 26 01:35:16.605 n1 pacemaker-based [54] ..." (local time, no year: only the
# differences between lines are used).
_STAMP: Final = re.compile(r"^(\w{3} +\d+ \d\d:\d\d:\d\d\.\d{3}) ")
# Lines from two moves are never this close: a move starts a new chain only this long
# after the previous one (every node logs the same constraint within milliseconds).
_SAME_MOVE_S: Final = 1.0
_YEAR: Final = 2024  # a leap year, so that "Feb 29" parses; the year itself is never used

STEPS: Final = (
    "schedule",
    "pre_demote_notify",
    "demote",
    "post_demote_notify",
    "pre_promote_notify",
    "promote",
)
"""The chain's steps, in order; each ends where the next starts."""

_MARKS: Final = (
    ("pre_demote_notify", f"Initiating notify operation {RESOURCE}_pre_notify_demote_0"),
    ("demote", f"Initiating demote operation {RESOURCE}_demote_0"),
    ("post_demote_notify", f"Result of demote operation for {RESOURCE} on "),
    ("pre_promote_notify", f"Initiating notify operation {RESOURCE}_pre_notify_promote_0"),
    ("promote", f"Initiating promote operation {RESOURCE}_promote_0"),
)
_MOVE: Final = f'<rsc_location id="cli-prefer-{CLONE}"'
_PROMOTED: Final = re.compile(rf"Result of promote operation for {RESOURCE} on \S+: ok\b")


@final
@dataclass(frozen=True, slots=True)
class PromotionChain:
    """When each step of one move started, and when the promote succeeded."""

    moved_at: datetime
    started: dict[str, datetime]
    promoted_at: datetime

    def seconds(self) -> dict[str, float]:
        """Each step's duration, plus ``total`` from the move to the promote's success."""
        bounds = [self.moved_at, *(self.started[step] for step in STEPS[1:]), self.promoted_at]
        steps = {
            step: round((end - start).total_seconds(), 3)
            for step, start, end in zip(STEPS, bounds[:-1], bounds[1:], strict=True)
        }
        steps["total"] = round((self.promoted_at - self.moved_at).total_seconds(), 3)
        return steps


def promotion_chains(lines: Iterable[str]) -> list[PromotionChain]:
    """Return the chains of every successful move in ``lines`` (any order, any node).

    Each step starts at its first occurrence after the move, and the chain ends at the
    first successful promote: when PAF aborted a promotion and Pacemaker tried again,
    the ``promote`` step includes the retries. A move that never reached a successful
    promote (cut off by the end of the log, or by the next move) is left out, as is
    one missing any step.
    """
    stamped = sorted((stamp, line) for line in lines if (stamp := _timestamp(line)) is not None)
    chains: list[PromotionChain] = []
    moved_at: datetime | None = None
    started: dict[str, datetime] = {}
    for stamp, line in stamped:
        if _MOVE in line and "++" in line:
            if moved_at is None or (stamp - moved_at).total_seconds() > _SAME_MOVE_S:
                moved_at, started = stamp, {}
            continue
        if moved_at is None:
            continue
        for step, mark in _MARKS:
            if mark in line and step not in started and _in_order(step, started):
                started[step] = stamp
        if _PROMOTED.search(line) and len(started) == len(_MARKS):
            chains.append(PromotionChain(moved_at, started, stamp))
            moved_at, started = None, {}
    return chains


def _in_order(step: str, started: dict[str, datetime]) -> bool:
    """Whether every step before ``step`` has started (a stray earlier line is ignored)."""
    before = STEPS[1 : STEPS.index(step)]
    return all(previous in started for previous in before)


def _timestamp(line: str) -> datetime | None:
    match = _STAMP.match(line)
    if match is None:
        return None
    return datetime.strptime(f"{_YEAR} {match.group(1)}", "%Y %b %d %H:%M:%S.%f")  # noqa: DTZ007 - Pacemaker's local time, compared only with itself


FAILOVER_MARKS: Final = ("detected", "fence_requested", "fenced", "promoted")
"""An unplanned failover's steps in Pacemaker's logs, in order (see :func:`failover_marks`)."""


def failover_marks(lines: Iterable[str], failed: str, since: datetime) -> dict[str, datetime]:
    """When Pacemaker saw node ``failed`` fail, asked to fence it, fenced it, and promoted.

    ``lines`` are every node's pacemaker.log lines (any order); only lines at or after
    ``since`` (Pacemaker's local time, any year) count, and each mark is its first
    occurrence after the one before it:

    * ``detected``: corosync lost the node (``Node nK state is now lost``), or the
      primary's monitor failed there (``Result of monitor operation ... on nK`` not ok);
    * ``fence_requested``: ``Requesting fencing (off) of node nK``;
    * ``fenced``: ``Peer nK was terminated (off) ... OK``;
    * ``promoted``: the first successful promote on another node.

    A mark that is not in the logs is left out.
    """
    patterns = {
        "detected": re.compile(
            rf"Node {failed} state is now lost|Result of monitor operation for {RESOURCE} "
            rf"on {failed}: (?!ok\b)"
        ),
        "fence_requested": re.compile(rf"Requesting fencing \(\w+\) of node {failed}\b"),
        "fenced": re.compile(rf"Peer {failed} was terminated \(\w+\) .*: OK"),
        "promoted": re.compile(
            rf"Result of promote operation for {RESOURCE} on (?!{failed}:)\S+: ok\b"
        ),
    }
    when = since.replace(year=_YEAR)
    stamped = sorted((stamp, line) for line in lines if (stamp := _timestamp(line)) is not None)
    marks: dict[str, datetime] = {}
    after = when
    for mark in FAILOVER_MARKS:
        for stamp, line in stamped:
            if stamp >= after and patterns[mark].search(line):
                marks[mark] = after = stamp
                break
    return marks
