from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pgcm_lab import provision
from pgcm_lab.lab import Lab, Progress
from pgcm_lab.node import pgcm_files, select_debs
from pgcm_lab.pgcm import pgcm_services, render_pgcm_toml
from pgcm_lab.topology import Topology


def test_postgres_nodes_get_supervise_and_proxy_configs_the_app_node_proxy_and_failover() -> None:
    topology = Topology()
    db = {f.path for f in pgcm_files(topology, topology.node("n1"))}
    app = {f.path for f in pgcm_files(topology, topology.app)}
    template = "/etc/pgbouncer/pgbouncer.ini.template"
    assert db == {"/etc/pgcm/supervise.toml", "/etc/pgcm/proxy.toml", template}
    assert app == {"/etc/pgcm/proxy.toml", "/etc/pgcm/failover.toml", template}


def test_container_configs_are_the_netns_labs_rendering(tmp_path: Path) -> None:
    topology = Topology()
    lab = Lab(tmp_path, progress=Progress(None))
    for node in topology.all_nodes:
        for item in pgcm_files(topology, node):
            if item.path.endswith(".toml"):
                assert item.content == render_pgcm_toml(lab, node)
                tomllib.loads(item.content)
    # As the packages install them: root and the daemon's group only.
    secrets = {f.path: (f.owner, f.mode) for f in pgcm_files(topology, topology.node("n2"))}
    assert secrets["/etc/pgcm/supervise.toml"] == ("haclient", 0o640)
    assert secrets["/etc/pgcm/proxy.toml"] == ("postgres", 0o640)


def test_both_labs_run_the_daemons_of_each_role(tmp_path: Path) -> None:
    services = {s.name: s.node for s in pgcm_services(Lab(tmp_path, progress=Progress(None)))}
    assert services == {"pgcm-supervise": "db", "pgcm-proxy": "all"}
    assert provision.daemons(Topology().app) == ("pgcm-proxy",)
    assert "pgcm-failover" in provision.packages(Topology().app)


def test_select_debs_takes_the_newest_build_of_each_package(tmp_path: Path) -> None:
    old = tmp_path / "pgcm-proxy_0.1.0-1_amd64.deb"
    new = tmp_path / "pgcm-proxy_0.1.0-2_amd64.deb"
    failover = tmp_path / "pgcm-failover_0.1.0-1_amd64.deb"
    for path in (old, new, failover):
        path.write_bytes(b"")
    os.utime(old, (1, 1))
    assert select_debs(tmp_path, ("pgcm-proxy", "pgcm-failover")) == [new, failover]


def test_select_debs_says_how_to_build_a_missing_package(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"packaging/build_debs\.py"):
        select_debs(tmp_path, ("pgcm-supervise",))


def test_the_container_program_needs_nothing_beyond_the_standard_library() -> None:
    # The images run it with Debian's python3 and no site-packages (-S: none at all).
    src = Path(__file__).resolve().parents[2] / "src"
    code = "import pgcm_lab.node, pgcm_lab.units, pgcm_lab.provision, pgcm_lab.pgcmconf"
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        env={"PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
