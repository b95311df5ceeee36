"""Render every node's configuration: the one source of truth for the lab and compose/.

The netns lab writes these files into each node's private directories; the compose
containers call ``python -m pgcm_lab.render --node n1 --root /`` at start-up. Both
therefore run the same corosync.conf, PostgreSQL settings, CIB and pgbouncer.ini.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import final

from pgcm_lab.topology import (
    CLUSTER_NAME,
    ETCD_CLIENT_PORT,
    ETCD_PEER_PORT,
    PG_BINDIR,
    PG_NODE_CONF,
    PGDATA,
    POSTGRES_PORT,
    Node,
    Topology,
)

__all__ = [
    "LEGACY_TMPDIR",
    "RenderedFile",
    "etcd_argv",
    "main",
    "node_files",
    "primary_conninfo",
    "render_cib",
    "render_cib_resources",
    "render_corosync_conf",
    "render_fence_device",
    "render_hosts",
    "render_pg_hba",
    "render_pgbouncer_ini",
    "render_postgresql_conf",
    "render_template",
]


# The legacy agent's state (rep_mode.conf, recovery.conf, PGSQL.lock): outside PGDATA.
LEGACY_TMPDIR = "/var/lib/postgresql/tmp"
# What the legacy agent appends to the ``host=... port= user= application_name=`` it
# writes itself: the same multi-host following as :func:`primary_conninfo`.
_LEGACY_CONNINFO_OPT = (
    "target_session_attrs=read-write connect_timeout=2 tcp_user_timeout=3000 "
    "keepalives_idle=5 keepalives_interval=2 keepalives_count=2"
)


@final
@dataclass(frozen=True, slots=True)
class RenderedFile:
    """A file to write inside a node: its path there, content, owner and mode."""

    path: str
    content: str
    owner: str = "root"
    mode: int = 0o644


def render_template(name: str, values: Mapping[str, object]) -> str:
    """Fill the packaged template ``name`` with ``values``.

    Raises:
        KeyError: the template names a value that was not given.
    """
    text = files("pgcm_lab").joinpath("templates", name).read_text(encoding="utf-8")
    return Template(text).substitute({key: str(value) for key, value in values.items()})


def render_corosync_conf(topology: Topology) -> str:
    """corosync.conf for every Postgres node (identical on all of them)."""
    nodelist = "".join(
        f"\tnode {{\n\t\tname: {node.name}\n\t\tnodeid: {node.nodeid}\n"
        f"\t\tring0_addr: {node.address}\n\t}}\n"
        for node in topology.nodes
    )
    return render_template(
        "corosync.conf",
        {"cluster_name": CLUSTER_NAME, "token_ms": topology.token_ms, "nodelist": nodelist},
    )


def synchronous_standby_names(topology: Topology) -> str:
    """``FIRST 1 (n1, n2, n3)``: one sync and the rest potential standbys."""
    return f"FIRST 1 ({', '.join(node.name for node in topology.nodes)})"


def render_postgresql_conf(topology: Topology) -> str:
    """The settings appended to every node's postgresql.conf (copied by pg_basebackup)."""
    return render_template(
        "postgresql.conf",
        {
            "synchronous_standby_names": synchronous_standby_names(topology),
            "node_conf": PG_NODE_CONF,
        },
    )


def primary_conninfo(topology: Topology, name: str) -> str:
    """The multi-host conninfo with which ``name`` finds whichever node is primary."""
    hosts = ",".join(str(node.address) for node in topology.others(name))
    return (
        f"host={hosts} port={POSTGRES_PORT} user=replicator application_name={name} "
        "target_session_attrs=read-write connect_timeout=2 tcp_user_timeout=3000 "
        "keepalives_idle=5 keepalives_interval=2 keepalives_count=2"
    )


def render_node_conf(topology: Topology, name: str) -> str:
    """``pgcm-node.conf``: the per-node file outside PGDATA."""
    return render_template(
        "pgcm-node.conf", {"node": name, "primary_conninfo": primary_conninfo(topology, name)}
    )


def render_pg_hba(topology: Topology) -> str:
    """Lines appended to pg_hba.conf: trust inside the lab subnet (lab only)."""
    return render_template("pg_hba.conf", {"subnet": topology.network})


def render_cib_resources(topology: Topology, *, fencing: bool = False) -> str:
    """The promotable clone (the ``<clone>`` element of the CIB's resources).

    PAF by default; with ``topology.legacy`` the legacy ``ocf:heartbeat:pgsql`` agent
    in ``rep_mode=sync`` without a floating IP: ``master_ip`` holds every node's address
    (the agent only writes it as ``host=`` into ``primary_conninfo``), and
    ``target_session_attrs=read-write`` makes each standby find whichever node is primary.
    With ``fencing``, a failed monitor of the primary fences its node (see
    :func:`render_cib`).
    """
    values: dict[str, object] = {
        "clone": topology.clone,
        "resource": topology.resource,
        "clone_max": topology.size,
        "pg_bindir": PG_BINDIR,
        "pgdata": PGDATA,
        # One PAF monitor interval is what a switchover waits before it may clear
        # the move (docs/lab.md): shorter than PAF's usual 15 s/16 s keeps the lab quick.
        "monitor_promoted": topology.monitor_promoted,
        "monitor_unpromoted": topology.monitor_unpromoted,
        "promoted_on_fail": "fence" if fencing else "restart",
    }
    if not topology.legacy:
        return render_template("cib-resources.xml", values).rstrip("\n")
    values |= {
        "node_list": " ".join(node.name for node in topology.nodes),
        "master_ip": ",".join(str(node.address) for node in topology.nodes),
        "primary_conninfo_opt": _LEGACY_CONNINFO_OPT,
        "tmpdir": LEGACY_TMPDIR,
    }
    return render_template("cib-resources-pgsql.xml", values).rstrip("\n")


def render_fence_device(topology: Topology, fence_socket: str) -> str:
    """The lab's stonith resource: ``fence_pgcmlab`` for every Postgres node."""
    return render_template(
        "cib-fencing.xml",
        {
            "hosts": " ".join(node.name for node in topology.nodes),
            "fence_socket": fence_socket,
        },
    ).rstrip("\n")


def render_cib(
    topology: Topology, *, with_resources: bool = True, fence_socket: str | None = None
) -> str:
    """The CIB every node starts from: options, defaults and (optionally) the PAF clone.

    Pre-seeding it (instead of loading it after start) is what lets ``dc-deadtime`` take
    effect for the very first DC election. The netns lab leaves the clone out so that
    Pacemaker elects its DC while PostgreSQL is still being bootstrapped (a probe would
    stop the bootstrap server), then adds :func:`render_cib_resources` with cibadmin.

    With ``fence_socket`` (the netns lab) fencing is on: ``stonith-enabled=true``, the
    ``fence_pgcmlab`` device is pre-seeded (it disturbs no bootstrap), fencing powers a
    node off and leaves it off (``pgcm-lab rejoin`` brings it back as a standby), and a
    failed monitor of the primary fences its node. Without it (the compose cluster:
    ``fence_docker`` would need the Docker engine's API reachable from every node, root
    on the host for each; see compose/README.md) fencing stays off.
    """
    fencing = fence_socket is not None
    resources = [render_fence_device(topology, fence_socket)] if fence_socket else []
    if with_resources:
        resources.append(render_cib_resources(topology, fencing=fencing))
    return render_template(
        "cib.xml",
        {
            "cluster_name": CLUSTER_NAME,
            "dc_deadtime": topology.dc_deadtime,
            "stonith_enabled": "true" if fencing else "false",
            "resources": "\n".join(resources),
        },
    )


def render_pgbouncer_ini(node: Node, primary: Node) -> str:
    """pgbouncer.ini for ``node``, routing every database to ``primary``."""
    return render_template(
        "pgbouncer.ini",
        {
            "node": node.name,
            "primary_host": primary.address,
            "listen_addr": f"{node.address},127.0.0.1",
        },
    )


def render_hosts(topology: Topology, node: Node) -> str:
    """/etc/hosts for ``node``: localhost, itself first, then every other node."""
    lines = ["127.0.0.1 localhost", f"{node.address} {node.name}"]
    lines += [f"{other.address} {other.name}" for other in topology.all_nodes if other != node]
    return "\n".join(lines) + "\n"


def etcd_argv(topology: Topology, node: Node) -> list[str]:
    """The etcd command line of ``node``'s member (node IP and 127.0.0.1 for clients)."""
    cluster = ",".join(
        f"{other.name}=http://{other.address}:{ETCD_PEER_PORT}" for other in topology.nodes
    )
    return [
        "etcd",
        f"--name={node.name}",
        "--data-dir=/var/lib/etcd/member-data",
        (
            f"--listen-client-urls=http://{node.address}:{ETCD_CLIENT_PORT},"
            f"http://127.0.0.1:{ETCD_CLIENT_PORT}"
        ),
        f"--advertise-client-urls=http://{node.address}:{ETCD_CLIENT_PORT}",
        f"--listen-peer-urls=http://{node.address}:{ETCD_PEER_PORT}",
        f"--initial-advertise-peer-urls=http://{node.address}:{ETCD_PEER_PORT}",
        f"--initial-cluster={cluster}",
        f"--initial-cluster-token={CLUSTER_NAME}",
        "--initial-cluster-state=new",
    ]


def node_files(
    topology: Topology,
    name: str,
    primary: str = "n1",
    *,
    with_resources: bool = True,
    fence_socket: str | None = None,
) -> list[RenderedFile]:
    """Every configuration file of node ``name``, as paths inside that node.

    PostgreSQL's own settings are not among them: they are appended to PGDATA after
    initdb (see :func:`render_postgresql_conf`).
    """
    node = topology.node(name)
    bouncer = render_pgbouncer_ini(node, topology.node(primary))
    common = [
        RenderedFile("/etc/hosts", render_hosts(topology, node)),
        RenderedFile("/etc/pgbouncer/pgbouncer.ini", bouncer, owner="postgres", mode=0o640),
        RenderedFile("/etc/pgbouncer/userlist.txt", '"postgres" ""\n', "postgres", 0o640),
    ]
    if node.is_app:
        return common
    return [
        *common,
        RenderedFile("/etc/corosync/corosync.conf", render_corosync_conf(topology)),
        RenderedFile(
            "/var/lib/pacemaker/cib/cib.xml",
            render_cib(topology, with_resources=with_resources, fence_socket=fence_socket),
            owner="hacluster",
            mode=0o600,
        ),
        RenderedFile(PG_NODE_CONF, render_node_conf(topology, name), owner="postgres"),
        RenderedFile(
            "/var/lib/postgresql/pgcm-postgresql.conf",
            render_postgresql_conf(topology),
            owner="postgres",
        ),
        RenderedFile(
            "/var/lib/postgresql/pgcm-pg_hba.conf", render_pg_hba(topology), owner="postgres"
        ),
    ]


def write_files(root: Path, rendered: Sequence[RenderedFile], *, chown: bool) -> None:
    """Write ``rendered`` below ``root`` (``/`` inside a container)."""
    for item in rendered:
        target = root / item.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(item.content, encoding="utf-8")
        target.chmod(item.mode)
        if chown:
            os.chown(target, *_ids(item.owner))


def _ids(user: str) -> tuple[int, int]:
    import pwd  # noqa: PLC0415  # POSIX-only; imported where used so the module loads anywhere

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pgcm_lab.render``: write one node's files (used by compose/)."""
    parser = argparse.ArgumentParser(prog="python -m pgcm_lab.render", description=__doc__)
    parser.add_argument("--node", required=True, help="n1…nN or app")
    parser.add_argument("--root", type=Path, default=Path("/"), help="write below this dir")
    parser.add_argument("--size", type=int, default=3, help="number of Postgres nodes")
    parser.add_argument("--no-chown", action="store_true", help="leave owners alone")
    parser.add_argument("--etcd-argv", action="store_true", help="print etcd's argv instead")
    args = parser.parse_args(argv)
    topology = Topology(size=args.size)
    if args.etcd_argv:
        sys.stdout.write("\n".join(etcd_argv(topology, topology.node(args.node))) + "\n")
        return 0
    write_files(args.root, node_files(topology, args.node), chown=not args.no_chown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
