"""Fencing history and failed or blocked instances in crm_mon's XML."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from pgcm_common.pacemaker import (
    ClusterState,
    CrmMonOptions,
    CrmMonParseError,
    FenceAction,
    FenceStatus,
    PacemakerError,
    Role,
    parse_crm_mon,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pacemaker"
HEALTHY = (FIXTURES / "01-healthy-n1-primary.xml").read_text()
_END = "</pacemaker-result>"


def with_section(xml: str) -> ClusterState:
    """Parse the healthy sample with ``xml`` added before its end."""
    return parse_crm_mon(HEALTHY.replace(_END, xml + _END), resource_id="pgsqld")


def event(status: str, target: str = "n1", completed: str | None = None, **extra: str) -> str:
    attributes = {
        "status": status,
        "action": "off",
        "target": target,
        "client": "pacemaker-controld.1234",
        "origin": "n2",
        **({"completed": completed} if completed else {}),
        **extra,
    }
    return "<fence_event " + " ".join(f'{k}="{v}"' for k, v in attributes.items()) + "/>"


def test_a_sample_without_fence_history_has_no_fencing_and_no_trouble() -> None:
    state = parse_crm_mon(HEALTHY, resource_id="pgsqld")
    assert state.fencing == ()
    assert state.fence_history_error is None
    assert state.troubled_instances == ()
    assert state.needs_attention() == ()


def test_every_fence_event_is_kept_with_each_attribute() -> None:
    state = with_section(
        '<fence_history status="0">'
        + event("pending", delegate="n3")
        + event(
            "failed",
            target="n3",
            completed="2026-12-07 04:40:12 +00:00",
            delegate="n1",
            **{"exit-reason": "agent timed out", "extended-status": "Timed out"},
        )
        + "</fence_history>"
    )
    assert state.fencing == (
        FenceAction(
            target="n1",
            action="off",
            status=FenceStatus.PENDING,
            origin="n2",
            client="pacemaker-controld.1234",
            delegate="n3",
        ),
        FenceAction(
            target="n3",
            action="off",
            status=FenceStatus.FAILED,
            origin="n2",
            client="pacemaker-controld.1234",
            delegate="n1",
            completed="2026-12-07 04:40:12 +00:00",
            exit_reason="agent timed out",
            extended_status="Timed out",
        ),
    )
    assert state.pending_fencing == state.fencing[:1]
    assert state.failed_fencing == state.fencing[1:]
    assert state.fencing[1].completed_time == datetime(2026, 12, 7, 4, 40, 12, tzinfo=UTC)
    assert state.needs_attention() == ("fencing (off) of n1 pending, requested by n2",)


def test_a_failure_followed_by_a_success_on_the_same_node_is_resolved() -> None:
    state = with_section(
        "<fence_history>"
        + event("success", completed="2026-12-07 04:41:00 +00:00")
        + event("failed", completed="2026-12-07 04:40:00 +00:00")
        + event("failed", target="n3", completed="2026-12-07 04:39:00 +00:00")
        + "</fence_history>"
    )
    assert [(f.target, f.status) for f in state.failed_fencing] == [("n3", FenceStatus.FAILED)]


def test_a_failure_after_the_last_success_is_not_resolved_whatever_the_order() -> None:
    # Listed oldest first on purpose: the completion times decide.
    state = with_section(
        "<fence_history>"
        + event("success", completed="2026-12-07 04:30:00 +00:00")
        + event("failed", completed="2026-12-07 04:40:00 +00:00")
        + "</fence_history>"
    )
    assert [f.status for f in state.failed_fencing] == [FenceStatus.FAILED]


def test_without_readable_times_the_listing_order_decides() -> None:
    state = with_section(
        "<fence_history>"
        + event("success", completed="yesterday")
        + event("failed")
        + "</fence_history>"
    )
    assert state.fencing[0].completed_time is None
    assert state.failed_fencing == ()


def test_completion_time_without_a_zone_is_naive() -> None:
    action = FenceAction(
        target="n1",
        action="reboot",
        status=FenceStatus.SUCCESS,
        origin="n2",
        client="stonith_admin.1",
        completed="2026-12-07 04:40:12",
    )
    assert action.completed_time == datetime(2026, 12, 7, 4, 40, 12)  # noqa: DTZ001 - naive on purpose
    aware = dataclasses.replace(action, completed="2026-12-07 05:40:12 +01:00")
    assert aware.completed_time == datetime(
        2026, 12, 7, 5, 40, 12, tzinfo=timezone(timedelta(hours=1))
    )


def test_a_fencer_that_could_not_answer_is_reported_not_hidden() -> None:
    state = with_section('<fence_history status="-107"/>')
    assert state.fencing == ()
    assert state.fence_history_error == -107


def test_failed_and_blocked_instances_are_listed_and_need_attention() -> None:
    blocked = HEALTHY.replace(
        'role="Promoted" active="true" orphaned="false" blocked="false" managed="true" '
        'failed="false"',
        'role="Promoted" active="true" orphaned="false" blocked="true" managed="false" '
        'failed="true"',
    )
    state = parse_crm_mon(blocked, resource_id="pgsqld")
    [instance] = state.troubled_instances
    assert (instance.node, instance.failed, instance.blocked, instance.managed) == (
        "n1",
        True,
        True,
        False,
    )
    assert state.needs_attention() == ("pgsqld (Promoted) on n1 is failed, blocked",)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("<fence_history>" + event("exploded") + "</fence_history>", "'exploded'"),
        (
            "<fence_history>" + event("pending").replace('target="n1" ', "") + "</fence_history>",
            "lacks the 'target' attribute",
        ),
        (
            "<fence_history>" + event("pending").replace(' origin="n2"', "") + "</fence_history>",
            "lacks the 'origin' attribute",
        ),
        ('<fence_history status="bad"/>', "'status' is 'bad', not an integer"),
        ("<fence_history/><fence_history/>", "<fence_history> is printed more than once"),
    ],
)
def test_malformed_fence_history_is_a_clear_error(section: str, message: str) -> None:
    with pytest.raises(CrmMonParseError, match=message) as caught:
        with_section(section)
    assert isinstance(caught.value, PacemakerError)


def test_a_fence_event_with_an_entity_reference_is_refused() -> None:
    hostile = '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "n9">]>' + HEALTHY.split("?>", 1)[
        -1
    ].replace(
        _END,
        '<fence_history><fence_event status="pending" action="off" target="&e;" '
        'client="c" origin="n2"/></fence_history>' + _END,
    )
    with pytest.raises(CrmMonParseError, match="forbidden XML construct"):
        parse_crm_mon(hostile, resource_id="pgsqld")


def test_the_reader_asks_crm_mon_for_the_latest_success_of_each_node() -> None:
    assert CrmMonOptions().argv(CrmMonOptions().dialect)[-1] == "--fence-history=2"


# -- real crm_mon output from the lab (Pacemaker 2.1.5, fencing on) -------------------


def load(name: str) -> ClusterState:
    return parse_crm_mon((FIXTURES / name).read_bytes(), resource_id="pgsqld")


def test_real_pending_fencing_of_a_hung_primary() -> None:
    # n1's PostgreSQL SIGSTOPped: its monitor timed out, n3 (the DC) fences n1.
    state = load("40-fencing-pending-n1-postgres-hung.xml")
    [pending] = state.pending_fencing
    assert (pending.target, pending.action, pending.origin, pending.delegate) == (
        "n1",
        "off",
        "n3",
        None,
    )
    assert pending.client.startswith("pacemaker-controld")
    assert pending.completed is None
    n1 = state.node("n1")
    assert n1 is not None
    assert n1.unclean
    [failed] = state.troubled_instances
    assert (failed.node, failed.failed, failed.blocked) == ("n1", True, False)
    assert state.needs_attention() == (
        "pgsqld (Promoted) on n1 is failed",
        "fencing (off) of n1 pending, requested by n3",
    )


def test_real_history_after_the_node_was_fenced() -> None:
    # crm_mon -1 --output-as=xml --fence-history=2, as supervise runs it.
    state = load("41-fenced-n1-n2-promoted.xml")
    [done] = state.fencing
    assert (done.target, done.action, done.status, done.origin, done.delegate) == (
        "n1",
        "off",
        FenceStatus.SUCCESS,
        "n3",
        "n3",
    )
    assert done.completed == "2026-12-07 04:45:42Z"
    assert done.completed_time == datetime(2026, 12, 7, 4, 45, 42, tzinfo=UTC)
    assert state.primary_node == "n2"
    assert (state.pending_fencing, state.failed_fencing, state.troubled_instances) == ((), (), ())
    assert state.needs_attention() == ()


@pytest.mark.parametrize(
    "name", ["42-blocked-n2-stonith-disabled.xml", "42b-blocked-n2-view-from-n2.xml"]
)
def test_real_blocked_primary_with_fencing_disabled(name: str) -> None:
    # stonith-enabled=false, n2's PostgreSQL SIGSTOPped: demote and stop time out, and
    # Pacemaker, unable to fence, leaves the instance failed, blocked and unmanaged.
    state = load(name)
    [blocked] = state.troubled_instances
    assert (blocked.node, blocked.role, blocked.failed, blocked.blocked, blocked.managed) == (
        "n2",
        Role.PROMOTED,
        True,
        True,
        False,
    )
    [stop] = [f for f in state.failures if f.task == "stop"]
    assert stop.node == "n2"
    # The earlier fencing of n1 is history, not trouble.
    assert [(f.target, f.status) for f in state.fencing] == [("n1", FenceStatus.SUCCESS)]
    assert state.needs_attention() == ("pgsqld (Promoted) on n2 is failed, blocked",)
