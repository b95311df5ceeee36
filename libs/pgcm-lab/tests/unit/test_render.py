from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest
from defusedxml import ElementTree

from pgcm_lab.render import (
    etcd_argv,
    node_files,
    primary_conninfo,
    render_cib,
    render_cib_resources,
    render_corosync_conf,
    render_pgbouncer_ini,
    render_postgresql_conf,
    write_files,
)
from pgcm_lab.topology import Topology


def test_nodes_get_addresses_from_ten_and_the_app_node_one_hundred() -> None:
    topology = Topology()
    assert [str(n.address) for n in topology.all_nodes] == [
        "10.250.0.11",
        "10.250.0.12",
        "10.250.0.13",
        "10.250.0.100",
    ]
    assert topology.node("2").name == "n2"
    assert topology.node("app").is_app


def test_topology_refuses_impossible_sizes() -> None:
    with pytest.raises(ValueError, match="1 to 9"):
        Topology(size=0)


def test_primary_conninfo_lists_only_the_other_nodes_and_asks_for_a_writer() -> None:
    conninfo = primary_conninfo(Topology(), "n2")
    assert "host=10.250.0.11,10.250.0.13 " in conninfo
    assert "target_session_attrs=read-write" in conninfo
    assert "tcp_user_timeout=3000" in conninfo
    assert "application_name=n2" in conninfo


def test_postgresql_settings_give_one_sync_and_include_the_node_file_outside_pgdata() -> None:
    conf = render_postgresql_conf(Topology())
    assert "synchronous_standby_names = 'FIRST 1 (n1, n2, n3)'" in conf
    assert "include_if_exists = '/var/lib/postgresql/pgcm-node.conf'" in conf
    assert "wal_log_hints = on" in conf


def test_corosync_conf_lists_every_node_with_its_ring_address() -> None:
    conf = render_corosync_conf(Topology(token_ms=1234))
    assert conf.count("nodeid:") == 3
    assert "ring0_addr: 10.250.0.13" in conf
    assert "token: 1234" in conf
    assert "transport: knet" in conf


def test_cib_is_valid_xml_with_a_short_dc_deadtime_and_the_paf_clone() -> None:
    root = ElementTree.fromstring(render_cib(Topology()))
    options = {nv.get("name"): nv.get("value") for nv in root.iter("nvpair")}
    assert options["dc-deadtime"] == "2s"
    assert options["no-quorum-policy"] == "stop"
    assert options["clone-max"] == "3"
    primitive = root.find(".//primitive")
    assert primitive is not None
    assert primitive.get("type") == "pgsqlms"
    ids = [el.get("id") for el in root.iter() if el.get("id")]
    assert len(ids) == len(set(ids))


def test_cib_without_resources_is_valid_and_the_clone_renders_alone() -> None:
    root = ElementTree.fromstring(render_cib(Topology(), with_resources=False))
    assert root.find(".//resources/clone") is None
    clone = ElementTree.fromstring(render_cib_resources(Topology()))
    assert clone.get("id") == "pgsql-ha"


def test_pgbouncer_routes_to_the_primary_in_transaction_mode() -> None:
    topology = Topology()
    ini = render_pgbouncer_ini(topology.app, topology.node("n2"))
    assert "* = host=10.250.0.12 port=5432" in ini
    assert "pool_mode = transaction" in ini
    assert "listen_addr = 10.250.0.100,127.0.0.1" in ini
    assert "admin_users = postgres" in ini


def test_etcd_member_listens_on_its_address_and_loopback() -> None:
    topology = Topology()
    argv = etcd_argv(topology, topology.node("n3"))
    assert "--listen-client-urls=http://10.250.0.13:2379,http://127.0.0.1:2379" in argv
    assert any(a.startswith("--initial-cluster=n1=http://10.250.0.11:2380,") for a in argv)


def test_app_node_gets_only_pgbouncer_and_hosts() -> None:
    paths = {f.path for f in node_files(Topology(), "app")}
    assert paths == {"/etc/hosts", "/etc/pgbouncer/pgbouncer.ini", "/etc/pgbouncer/userlist.txt"}


def test_render_writes_a_nodes_files_below_a_root(tmp_path: Path) -> None:
    write_files(tmp_path, node_files(Topology(), "n1"), chown=False)
    assert (tmp_path / "etc/corosync/corosync.conf").is_file()
    assert "application_name=n1" in (tmp_path / "var/lib/postgresql/pgcm-node.conf").read_text()
    assert IPv4Address("10.250.0.11") in Topology().network


def test_the_netns_labs_cib_fences_with_fence_pgcmlab_and_compose_does_not() -> None:
    sock = "/var/tmp/pgcm-lab/fence/fence.sock"
    root = ElementTree.fromstring(render_cib(Topology(), fence_socket=sock))
    options = {nv.get("name"): nv.get("value") for nv in root.iter("nvpair")}
    assert options["stonith-enabled"] == "true"
    assert options["stonith-action"] == "off"
    assert options["pcmk_host_list"] == "n1 n2 n3"
    assert options["lab_socket"] == sock
    [device] = [p for p in root.iter("primitive") if p.get("class") == "stonith"]
    assert device.get("type") == "fence_pgcmlab"
    monitors = {op.get("role"): op.get("on-fail") for op in root.iter("op")
                if op.get("name") == "monitor" and op.get("role")}  # fmt: skip
    assert monitors == {"Promoted": "fence", "Unpromoted": None}
    ids = [el.get("id") for el in root.iter() if el.get("id")]
    assert len(ids) == len(set(ids))
    compose = ElementTree.fromstring(render_cib(Topology()))
    plain = {nv.get("name"): nv.get("value") for nv in compose.iter("nvpair")}
    assert plain["stonith-enabled"] == "false"
    assert not [p for p in compose.iter("primitive") if p.get("class") == "stonith"]
    assert {op.get("on-fail") for op in compose.iter("op") if op.get("role")} == {
        "restart",
        None,
    }
