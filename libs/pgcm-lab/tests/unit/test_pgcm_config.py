from __future__ import annotations

import tomllib
from pathlib import Path

from pgcm_lab.lab import Lab, Progress
from pgcm_lab.pgcm import TOKEN, render_pgbouncer_template, render_pgcm_toml


def _lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path / "state", progress=Progress(None))


def test_postgres_node_config_binds_supervise_on_its_address_with_a_token(tmp_path: Path) -> None:
    lab = _lab(tmp_path)
    config = tomllib.loads(render_pgcm_toml(lab, lab.topology.node("n2")))
    assert config["cluster"] == {"namespace": "/pgcm", "master_key": "/master"}
    assert config["etcd"]["endpoints"] == [f"10.250.0.{k}:2379" for k in (11, 12, 13)]
    supervise = config["supervise"]
    assert supervise["bind_address"] == "10.250.0.12:8080"
    assert supervise["token"] == TOKEN
    assert supervise["node_addresses"] == {f"n{k}": f"10.250.0.{10 + k}" for k in (1, 2, 3)}
    assert (supervise["resource_id"], supervise["clone_id"]) == ("pgsqld", "pgsql-ha")
    assert config["proxy"]["proxy_id"] == "n2"
    assert config["failover"]["endpoints"] == [f"10.250.0.{k}:8080" for k in (11, 12, 13)]


def test_app_node_config_has_no_supervise_table(tmp_path: Path) -> None:
    lab = _lab(tmp_path)
    config = tomllib.loads(render_pgcm_toml(lab, lab.topology.app))
    assert "supervise" not in config
    assert config["proxy"]["proxy_id"] == "app"


def test_templates_route_nodes_to_postgres_and_the_app_node_to_the_primary_pgbouncer(
    tmp_path: Path,
) -> None:
    lab = _lab(tmp_path)
    node = render_pgbouncer_template(lab.topology.node("n1"))
    app = render_pgbouncer_template(lab.topology.app)
    assert "postgres = host={{.Host}} port=5432 dbname=postgres" in node
    assert "* = host={{.Host}} port=5432" in node
    assert "postgres = host={{.Host}} port=6432 dbname=postgres" in app
    assert "port=5432" not in app
