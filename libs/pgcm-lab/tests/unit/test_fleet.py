from __future__ import annotations

import configparser
import tomllib
from pathlib import Path

import pytest

from pgcm_lab.errors import LabError
from pgcm_lab.fleet import (
    BASE_PORT,
    Fleet,
    Member,
    available_mb,
    member_pgbouncer_template,
    member_toml,
    parse_smaps_rollup,
    required_mb,
    set_keys,
    spread,
)
from pgcm_lab.lab import Lab, Progress
from pgcm_lab.topology import Topology

SMAPS_ROLLUP = """\
55d0a0a00000-7ffd5e3f2000 ---p 00000000 00:00 0                          [rollup]
Rss:               48212 kB
Pss:               31877 kB
Pss_Anon:          25000 kB
Shared_Clean:      16000 kB
"""


def _meminfo(available_kb: int) -> str:
    return f"MemTotal:       24684312 kB\nMemAvailable:   {available_kb} kB\n"


def test_set_keys_replaces_only_the_named_section() -> None:
    text = "[a]\nport = 1\n[b]\nport = 2\n; port = 3\n"
    assert set_keys(text, "b", {"port": "9"}) == "[a]\nport = 1\n[b]\nport = 9\n; port = 3\n"


def test_set_keys_refuses_a_key_the_section_lacks() -> None:
    with pytest.raises(LabError, match=r"\[b\] has no port"):
        set_keys("[a]\nport = 1\n[b]\n", "b", {"port": "9"})


def test_member_pgbouncer_template_has_its_own_port_socket_log_and_pidfile() -> None:
    member = Member(12)
    text = member_pgbouncer_template(Topology(), member)
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(text)
    bouncer = ini["pgbouncer"]
    assert bouncer["listen_addr"] == "127.0.0.1"
    assert bouncer["listen_port"] == str(BASE_PORT + 12)
    assert bouncer["unix_socket_dir"] == "/run/pgcm-fleet/app-12"
    assert bouncer["logfile"] == "/run/pgcm-fleet/app-12/pgbouncer.log"
    assert bouncer["pidfile"] == "/run/pgcm-fleet/app-12/pgbouncer.pid"
    # Routed like the app node's own PgBouncer: to the primary node's PgBouncer.
    assert ini["databases"]["postgres"] == "host={{.Host}} port=6432 dbname=postgres"


def test_member_toml_is_the_app_proxy_config_with_its_own_id_and_pgbouncer() -> None:
    topology = Topology()
    config = tomllib.loads(member_toml(topology, Member(7)))
    app = tomllib.loads(member_toml(topology, Member(8)))
    assert config["proxy"]["proxy_id"] == "app-7"
    assert config["proxy"]["pgbouncer_config_file"] == "/run/pgcm-fleet/app-7/pgbouncer.ini"
    assert (
        config["proxy"]["pgbouncer_config_template_file"]
        == "/run/pgcm-fleet/app-7/pgbouncer.ini.template"
    )
    assert config["pgbouncer"]["host"] == "/run/pgcm-fleet/app-7"
    assert config["pgbouncer"]["port"] == BASE_PORT + 7
    assert config["pgbouncer"]["user"] == "postgres"
    # Everything else as the app node's proxy has it.
    assert config["proxy"]["poll_interval"] == app["proxy"]["poll_interval"]
    assert config["etcd"] == app["etcd"]
    assert config["cluster"] == app["cluster"]
    assert "supervise" not in config


def test_parse_smaps_rollup_reads_rss_and_pss() -> None:
    memory = parse_smaps_rollup(SMAPS_ROLLUP)
    assert (memory.rss_kb, memory.pss_kb) == (48212, 31877)


def test_parse_smaps_rollup_refuses_text_without_pss() -> None:
    with pytest.raises(LabError, match="no Rss/Pss"):
        parse_smaps_rollup("Rss: 10 kB\n")


def test_available_mb_reads_memavailable() -> None:
    assert available_mb(_meminfo(8 * 1024 * 1024)) == 8192
    with pytest.raises(LabError, match="MemAvailable"):
        available_mb("MemTotal: 1 kB\n")


def test_check_memory_refuses_a_fleet_that_does_not_fit(tmp_path: Path) -> None:
    fleet = Fleet(Lab(tmp_path / "state", progress=Progress(None)))
    need_kb = required_mb(100) * 1024
    assert fleet.check_memory(100, _meminfo(need_kb)) == required_mb(100)
    with pytest.raises(LabError, match="100 proxy \\+ PgBouncer pairs need about"):
        fleet.check_memory(100, _meminfo(need_kb - 1024))


def test_members_are_found_on_disk_in_index_order(tmp_path: Path) -> None:
    fleet = Fleet(Lab(tmp_path / "state", progress=Progress(None)))
    assert fleet.members() == []
    for name in ("app-10", "app-2", "app-1", "other"):
        (fleet.host_dir / name).mkdir(parents=True)
    assert [m.proxy_id for m in fleet.members()] == ["app-1", "app-2", "app-10"]


def test_spread_is_first_median_p99_last() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert spread(values) == {"first": 1.0, "median": 50.5, "p99": 99.0, "last": 100.0}
    assert spread([3.0]) == {"first": 3.0, "median": 3.0, "p99": 3.0, "last": 3.0}


def test_member_toml_adds_extra_proxy_keys_for_one_pair() -> None:
    topology = Topology()
    longer = tomllib.loads(member_toml(topology, Member(3), {"ack_lease_ttl": '"60s"'}))
    plain = tomllib.loads(member_toml(topology, Member(4)))
    assert longer["proxy"]["ack_lease_ttl"] == "60s"
    assert longer["proxy"]["proxy_id"] == "app-3"
    assert "ack_lease_ttl" not in plain["proxy"]
