"""The legacy ``ocf:heartbeat:pgsql`` mode: topology names, CIB, the agent's fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from defusedxml import ElementTree

from pgcm_lab.crm import parse_crm_mon
from pgcm_lab.errors import LabError
from pgcm_lab.labhealth import _view_health  # the pure half of health()
from pgcm_lab.legacy import patch_agent, write_patched_agent
from pgcm_lab.pgcmconf import render_pgcm_toml
from pgcm_lab.render import render_cib_resources
from pgcm_lab.topology import Topology

_AGENT = """#!/bin/sh
: ${OCF_FUNCTIONS_DIR=${OCF_ROOT}/lib/heartbeat}
. ${OCF_FUNCTIONS_DIR}/ocf-shellfuncs

exec_with_retry 0 ocf_promotion_score -v $CAN_NOT_PROMOTE
"""

_LEGACY_VIEW = """<pacemaker-result><summary>
<current_dc present="true" name="n3" with_quorum="true"/></summary>
<nodes><node name="n1" online="true"/><node name="n2" online="true"/>
<node name="n3" online="true"/></nodes>
<resources><clone id="msPostgresql">
<resource id="pgsql" role="Promoted" active="true" failed="false"><node name="n1"/></resource>
<resource id="pgsql" role="Unpromoted" active="true" failed="false"><node name="n2"/></resource>
<resource id="pgsql" role="Unpromoted" active="true" failed="false"><node name="n3"/></resource>
</clone></resources>
<node_attributes>
<node name="n1"><attribute name="master-pgsql" value="1000"/></node>
<node name="n2"><attribute name="master-pgsql" value="100"/></node>
<node name="n3"><attribute name="master-pgsql" value="-INFINITY"/></node>
</node_attributes></pacemaker-result>"""


def test_paf_stays_the_default_and_the_legacy_clone_has_the_originals_name() -> None:
    assert (Topology().resource, Topology().clone) == ("pgsqld", "pgsql-ha")
    legacy = Topology(agent="pgsql")
    assert legacy.legacy
    assert (legacy.resource, legacy.clone) == ("pgsql", "msPostgresql")


def test_topology_refuses_an_unknown_agent() -> None:
    with pytest.raises(ValueError, match="unknown resource agent 'pgsqlx'"):
        Topology(agent="pgsqlx")


def test_legacy_cib_runs_the_pgsql_agent_in_sync_mode_with_every_address_as_master_ip() -> None:
    clone = ElementTree.fromstring(render_cib_resources(Topology(agent="pgsql")))
    assert clone.get("id") == "msPostgresql"
    primitive = clone.find("primitive")
    assert primitive is not None
    assert (primitive.get("id"), primitive.get("type")) == ("pgsql", "pgsql")
    params = {nv.get("name"): nv.get("value") for nv in primitive.iter("nvpair")}
    assert params["rep_mode"] == "sync"
    assert params["master_ip"] == "10.250.0.11,10.250.0.12,10.250.0.13"
    assert params["node_list"] == "n1 n2 n3"
    assert "target_session_attrs=read-write" in str(params["primary_conninfo_opt"])


def test_pgcm_in_a_legacy_lab_reads_the_legacy_resource_and_clone() -> None:
    topology = Topology(agent="pgsql")
    text = render_pgcm_toml(topology, topology.node("n1"))
    assert 'resource_id = "pgsql"' in text
    assert 'clone_id = "msPostgresql"' in text


def test_patch_redefines_the_promotion_score_helper_right_after_the_library() -> None:
    patched = patch_agent(_AGENT)
    library = patched.index(". ${OCF_FUNCTIONS_DIR}/ocf-shellfuncs")
    fix = patched.index("ocf_promotion_score() {")
    use = patched.index("exec_with_retry 0 ocf_promotion_score")
    assert library < fix < use
    assert '--promotion="${OCF_RESOURCE_INSTANCE%%:*}"' in patched
    assert "--update=$value" in patched


def test_patch_refuses_an_agent_that_does_not_source_the_library() -> None:
    with pytest.raises(LabError, match="does not source ocf-shellfuncs"):
        patch_agent("#!/bin/sh\necho no library\n")


def test_patched_copy_is_written_executable_and_the_original_is_untouched(tmp_path: Path) -> None:
    installed = tmp_path / "installed" / "pgsql"
    installed.parent.mkdir()
    installed.write_text(_AGENT, encoding="utf-8")
    written = write_patched_agent(tmp_path / "copy", installed)
    assert written.name == "pgsql"
    assert written.stat().st_mode & 0o111
    assert "ocf_promotion_score() {" in written.read_text(encoding="utf-8")
    assert installed.read_text(encoding="utf-8") == _AGENT


def test_a_missing_agent_is_a_lab_error(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="install resource-agents"):
        write_patched_agent(tmp_path / "copy", tmp_path / "absent" / "pgsql")


def test_the_legacy_async_standbys_minus_infinity_is_healthy_but_not_with_paf() -> None:
    view = parse_crm_mon(_LEGACY_VIEW, "pgsql")
    assert view.primary == "n1"
    assert _view_health(view, ["n1", "n2", "n3"], scores=False) == ("n1", "")
    primary, why = _view_health(view, ["n1", "n2", "n3"])
    assert primary is None
    assert "negative or missing promotion scores" in why
