from __future__ import annotations

import pytest

from pgcm_supervise.constraints import ConstraintsUnreadable, parse_move_constraints

CIB_CONSTRAINTS = """\
<constraints>
  <rsc_location id="cli-prefer-pgsql-ha" rsc="pgsql-ha" role="Promoted" node="n2"
                score="INFINITY"/>
  <rsc_location id="cli-ban-pgsql-ha-on-n3" rsc="pgsql-ha" node="n3" score="-INFINITY"/>
  <rsc_location id="cli-prefer-other" rsc="other" node="n1" score="INFINITY"/>
  <rsc_location id="loc-admin" rsc="pgsql-ha" node="n1" score="100"/>
</constraints>
"""


def test_move_and_ban_constraints_of_the_clone_are_listed_sorted() -> None:
    ids = parse_move_constraints(CIB_CONSTRAINTS, {"pgsqld", "pgsql-ha"})
    assert ids == ("cli-ban-pgsql-ha-on-n3", "cli-prefer-pgsql-ha")


def test_without_resources_every_move_constraint_is_listed() -> None:
    ids = parse_move_constraints(CIB_CONSTRAINTS, ())
    assert ids == ("cli-ban-pgsql-ha-on-n3", "cli-prefer-other", "cli-prefer-pgsql-ha")


def test_an_empty_constraints_section_lists_nothing() -> None:
    assert parse_move_constraints(b"<constraints/>", {"pgsql-ha"}) == ()


def test_output_that_is_not_xml_is_unreadable() -> None:
    with pytest.raises(ConstraintsUnreadable):
        parse_move_constraints("crm_resource: error", {"pgsql-ha"})
