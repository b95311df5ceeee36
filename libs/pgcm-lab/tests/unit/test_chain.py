"""Pacemaker/PAF's switchover chain read from real lab logs (one move, three nodes)."""

from __future__ import annotations

import random
from datetime import datetime
from pathlib import Path

from pgcm_lab.chain import FAILOVER_MARKS, STEPS, failover_marks, promotion_chains

# Every node's pacemaker.log lines of one move from n1 to n2 in the lab (cut to the
# lines that mark steps, plus cancels and notify results that must not be taken for
# them).
MOVE = (Path(__file__).parent / "data" / "pacemaker-move.log").read_text().splitlines()


def test_one_move_gives_each_step_its_duration() -> None:
    [chain] = promotion_chains(MOVE)
    assert chain.seconds() == {
        "schedule": 0.032,
        "pre_demote_notify": 0.256,
        "demote": 0.468,
        "post_demote_notify": 0.26,
        "pre_promote_notify": 0.716,
        "promote": 0.364,
        "total": 2.096,
    }
    assert list(chain.seconds())[: len(STEPS)] == list(STEPS)


def test_lines_in_any_order_give_the_same_chain() -> None:
    shuffled = MOVE.copy()
    random.Random(7).shuffle(shuffled)
    assert promotion_chains(shuffled) == promotion_chains(MOVE)


def test_a_failed_promote_is_no_chain() -> None:
    # PAF aborts a promotion when another standby has more WAL: the op fails.
    aborted = [line.replace("on n2: ok", "on n2: error") for line in MOVE]
    assert promotion_chains(aborted) == []


def test_a_move_cut_off_before_the_promote_is_no_chain() -> None:
    assert promotion_chains(MOVE[:-2]) == []


def test_two_moves_give_two_chains() -> None:
    later = [line.replace("01:38:", "01:40:") for line in MOVE]
    chains = promotion_chains([*MOVE, *later, "not a log line", ""])
    assert [c.seconds()["total"] for c in chains] == [2.096, 2.096]
    assert chains[1].moved_at > chains[0].promoted_at


# A hung primary's monitor timed out, then fencing, one promotion PAF aborted and the
# one that succeeded (every node's lines, cut from a lab run).
HUNG = (Path(__file__).parent / "data" / "pacemaker-hung.log").read_text().splitlines()
LOST = (
    "Dec 07 02:50:59.146 n3 pacemaker-attrd [45] (update_peer_state_iter) \tnotice: "
    "Node n1 state is now lost | nodeid=1 previous=member"
)


def local(stamp: str) -> datetime:
    """A naive datetime, as Pacemaker's local-time log stamps are."""
    return datetime.fromisoformat(stamp)


def test_an_unplanned_failover_gives_detection_fencing_and_promotion_times() -> None:
    since = local("2026-12-07 02:49:17")
    marks = failover_marks(reversed(HUNG), "n1", since)
    assert {k: v.strftime("%H:%M:%S.%f")[:-3] for k, v in marks.items()} == {
        "detected": "02:49:27.134",
        "fence_requested": "02:49:27.302",
        "fenced": "02:49:31.042",
        "promoted": "02:49:37.500",
    }
    assert list(marks) == list(FAILOVER_MARKS)


def test_a_lost_node_is_detected_and_earlier_lines_do_not_count() -> None:
    marks = failover_marks([LOST, *HUNG[2:]], "n1", local("2026-12-07 02:49:30"))
    # Everything before 02:49:30 is ignored; after the loss at 02:50:59 nothing follows.
    assert marks == {"detected": local("2024-12-07 02:50:59.146")}
    assert failover_marks(HUNG, "n1", local("2026-12-07 03:00:00")) == {}
