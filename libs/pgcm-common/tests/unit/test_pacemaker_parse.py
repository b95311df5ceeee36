from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pgcm_common.errors import PacemakerError
from pgcm_common.pacemaker import (
    SCORE_INFINITY,
    ClusterState,
    CrmMonParseError,
    InTransition,
    NoPrimary,
    NoQuorum,
    OutputFormat,
    PgsqlDataStatus,
    PgsqlStatus,
    PromotableResourceNotFound,
    Role,
    SeveralPrimaries,
    SinglePrimary,
    crm_mon_failure_detail,
    parse_crm_mon,
    parse_score,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pacemaker"
MALFORMED = FIXTURES / "malformed"


def load(name: str, resource_id: str = "pgsqld") -> ClusterState:
    return parse_crm_mon((FIXTURES / name).read_bytes(), resource_id=resource_id)


@pytest.mark.parametrize(
    "name",
    ["01-healthy-n1-primary.xml", "01-healthy-n1-primary-from-n3.xml", "06-final-healthy-n1.xml"],
)
def test_healthy_cluster_has_n1_as_single_primary(name: str) -> None:
    state = load(name)
    primary = state.primary
    assert isinstance(primary, SinglePrimary)
    assert (primary.node, primary.instance.role) == ("n1", Role.PROMOTED)
    assert state.primary_node == "n1"
    assert state.with_quorum
    assert state.output_format is OutputFormat.OUTPUT_AS_XML
    assert state.pacemaker_version == "2.1.5"
    assert state.clone_id == "pgsql-ha"
    assert state.resource_id == "pgsqld"
    assert [s.score for s in state.promotion_scores] == [1001, 1000, 990]
    assert state.promotion_score("n1") == 1001
    assert all(n.online and not n.standby and not n.unclean for n in state.nodes)


def test_healthy_state_reports_dc_nodes_and_roles() -> None:
    state = load("01-healthy-n1-primary.xml")
    assert state.dc == "n2"
    assert [(n.name, n.id, n.is_dc) for n in state.nodes] == [
        ("n1", "1", False),
        ("n2", "2", True),
        ("n3", "3", False),
    ]
    assert sorted((i.node or "", i.role) for i in state.instances) == [
        ("n1", Role.PROMOTED),
        ("n2", Role.UNPROMOTED),
        ("n3", Role.UNPROMOTED),
    ]
    assert state.failures == ()
    assert state.bans == ()


def test_legacy_as_xml_output_parses_to_the_same_primary() -> None:
    legacy = load("01-healthy-legacy-as-xml.xml")
    modern = load("01-healthy-n1-primary.xml")
    assert legacy.output_format is OutputFormat.LEGACY_AS_XML
    assert legacy.primary_node == modern.primary_node == "n1"
    assert legacy.promotion_scores == modern.promotion_scores
    assert legacy.nodes == modern.nodes


def test_pacemaker_1_1_master_slave_roles_are_normalised() -> None:
    state = load("30-synthetic-pacemaker-1.1-master-slave.xml")
    assert state.pacemaker_version == "1.1.24"
    assert state.primary_node == "n1"
    assert {i.role for i in state.instances} == {Role.PROMOTED, Role.UNPROMOTED}


def test_promoting_instance_during_switchover_is_in_transition_not_a_primary() -> None:
    state = load("02-during-switchover.xml")
    assert state.primary == InTransition(promoted=(), promoting=("n2",), demoting=())
    assert state.primary_node is None


def test_switchover_target_is_primary_once_promoted() -> None:
    state = load("02b-during-switchover.xml")
    assert state.primary_node == "n2"
    assert state.promotion_score("n1") == -1000
    assert state.promotion_score("n2") == 1001


def test_after_node_kill_the_dead_node_is_offline_and_its_instance_stopped() -> None:
    state = load("03-after-kill-n2.xml")
    n2 = state.node("n2")
    assert n2 is not None
    assert not n2.online
    assert state.primary_node == "n1"
    assert state.dc == "n1"
    stopped = [i for i in state.instances if i.role is Role.STOPPED]
    assert [(i.node, i.active) for i in stopped] == [(None, False)]
    assert state.promotion_score("n2") is None


@pytest.mark.parametrize(
    ("name", "promoted_claim"),
    [
        ("04-partitioned-n1-view-from-n1.xml", "n1"),
        ("05-after-partition-n2-minority-view.xml", "n2"),
    ],
)
def test_minority_partition_reports_no_quorum_instead_of_a_primary(
    name: str, promoted_claim: str
) -> None:
    state = load(name)
    assert not state.with_quorum
    assert state.primary == NoQuorum(promoted=())
    assert state.primary_node is None
    # The minority still thinks it holds the top score: exactly why it must not be trusted.
    assert state.promotion_score(promoted_claim) == 1001


@pytest.mark.parametrize(
    ("name", "primary"),
    [
        ("04-partitioned-n1-view-from-n2.xml", "n3"),
        ("05-after-partition-n2-majority-view.xml", "n3"),
    ],
)
def test_majority_partition_reports_its_primary_and_the_failed_promotion(
    name: str, primary: str
) -> None:
    state = load(name)
    assert state.with_quorum
    assert state.primary_node == primary
    [failure] = state.failures
    assert failure.task == "promote"
    assert failure.exitcode == 1
    assert failure.exitreason is not None
    assert "best candidate" in failure.exitreason


def test_stock_pgsql_agent_attributes_before_switchover() -> None:
    state = load("10-stock-pgsql-ra-healthy-n1.xml", resource_id="pgsql")
    assert state.primary_node == "n1"
    n1, n2, n3 = (state.legacy_pgsql_of(n) for n in ("n1", "n2", "n3"))
    assert n1 is not None
    assert n2 is not None
    assert n3 is not None
    assert (n1.status, n1.data_status, n1.data_latest) == (
        PgsqlStatus.PRI,
        PgsqlDataStatus.LATEST,
        True,
    )
    assert (n2.status, n2.data_status) == (PgsqlStatus.HS_SYNC, PgsqlDataStatus.STREAMING_SYNC)
    assert (n3.status, n3.data_status) == (PgsqlStatus.HS_ASYNC, PgsqlDataStatus.STREAMING_ASYNC)
    assert state.promotion_score("n3") == -SCORE_INFINITY
    attributes = state.attributes_of("n1")
    assert attributes is not None
    assert attributes.get("pgsql-master-baseline") == "00000000040000A0"


def test_stock_pgsql_agent_attributes_after_switchover_to_n2() -> None:
    state = load("11-stock-pgsql-ra-after-switchover-n2.xml", resource_id="pgsql")
    assert state.primary_node == "n2"
    latest = [a.node for a in state.legacy_pgsql if a.data_latest]
    assert latest == ["n2"]
    assert state.promotion_score("n1") == -SCORE_INFINITY


def test_clone_id_selects_the_same_resource_as_the_primitive_id() -> None:
    by_clone = load("01-healthy-n1-primary.xml", resource_id="pgsql-ha")
    by_primitive = load("01-healthy-n1-primary.xml", resource_id="pgsqld")
    assert by_clone == by_primitive


def test_real_one_node_stateful_sample_parses() -> None:
    for name in ("20-one-node-stateful.xml", "21-one-node-stateful-legacy-as-xml.xml"):
        state = load(name, resource_id="stateful")
        assert state.clone_id == "stateful-clone"
        assert state.primary_node == "pcmk1"
        assert state.promotion_score("pcmk1") == 10


def test_unknown_resource_is_a_clear_error() -> None:
    with pytest.raises(PromotableResourceNotFound, match="'nope': no clone"):
        load("01-healthy-n1-primary.xml", resource_id="nope")


def test_several_promoted_instances_are_reported_not_guessed() -> None:
    text = (FIXTURES / "01-healthy-n1-primary.xml").read_text()
    text = text.replace('role="Unpromoted"', 'role="Promoted"', 1)
    state = parse_crm_mon(text, resource_id="pgsqld")
    assert state.primary == SeveralPrimaries(nodes=("n1", "n3"))


def test_no_promoted_instance_with_quorum_is_no_primary() -> None:
    text = (FIXTURES / "01-healthy-n1-primary.xml").read_text()
    text = text.replace('role="Promoted"', 'role="Unpromoted"')
    assert parse_crm_mon(text, resource_id="pgsqld").primary == NoPrimary()


def test_missing_dc_means_no_quorum() -> None:
    text = (FIXTURES / "01-healthy-n1-primary.xml").read_text()
    start = text.index("<current_dc")
    end = text.index("/>", start) + 2
    state = parse_crm_mon(
        text[:start] + '<current_dc present="false"/>' + text[end:], resource_id="pgsqld"
    )
    assert (state.dc, state.with_quorum) == (None, False)
    assert isinstance(state.primary, NoQuorum)


def test_state_is_immutable() -> None:
    state = load("01-healthy-n1-primary.xml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.dc = "n3"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("empty.xml", "empty input"),
        ("not-xml.txt", "not well-formed XML"),
        ("wrong-root.xml", "unexpected root element <html>"),
        ("non-numeric-score.xml", "master-pgsqld of node 'n1': score 'lots'"),
        ("node-without-name.xml", "<node> lacks the 'name' attribute"),
        ("billion-laughs.xml", "forbidden XML construct"),
        ("external-entity.xml", "forbidden XML construct"),
        ("unknown-role.xml", "unknown role 'Supreme'"),
        ("bad-boolean.xml", "'present' is 'maybe', not true or false"),
        ("truncated.xml", "not well-formed XML"),
        ("crm-mon-not-connected.xml", r"crm_mon status 102 \(Not connected\)"),
        ("fence-event-unknown-status.xml", "<fence_event> status 'exploded'"),
        ("fence-event-without-target.xml", "<fence_event> lacks the 'target' attribute"),
    ],
)
def test_malformed_sample_raises_a_clear_parse_error(name: str, message: str) -> None:
    with pytest.raises(CrmMonParseError, match=message):
        parse_crm_mon((MALFORMED / name).read_bytes(), resource_id="pgsqld")


def test_parse_error_is_a_pacemaker_error() -> None:
    assert issubclass(CrmMonParseError, PacemakerError)
    assert issubclass(PromotableResourceNotFound, PacemakerError)


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("0", 0),
        ("-1000", -1000),
        ("+5", 5),
        ("INFINITY", SCORE_INFINITY),
        ("+INFINITY", SCORE_INFINITY),
        ("-INFINITY", -SCORE_INFINITY),
        ("99999999", SCORE_INFINITY),
    ],
)
def test_scores_parse_and_clamp_to_infinity(text: str, score: int) -> None:
    assert parse_score(text) == score


@pytest.mark.parametrize("text", ["", "1.5", "ten", "1e3", "- 1", "INFINITYX"])
def test_non_numeric_score_is_a_parse_error(text: str) -> None:
    with pytest.raises(CrmMonParseError, match="neither an integer"):
        parse_score(text)


def test_failure_detail_reads_crm_mon_status_and_errors() -> None:
    detail = crm_mon_failure_detail((MALFORMED / "crm-mon-not-connected.xml").read_bytes())
    assert detail.startswith("crm_mon status 102 (Not connected)")
    assert "Connection refused" in detail
    assert crm_mon_failure_detail(b"garbage") == ""
