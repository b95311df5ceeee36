"""pgcm's own configuration in the lab: one TOML per node and PgBouncer templates.

Rendered the same way for the netns lab (:mod:`pgcm_lab.pgcm` writes them into each
node's state directory) and the compose containers (:mod:`pgcm_lab.node` writes them
to the packaged paths under ``/etc/pgcm``). Standard library only, like
:mod:`pgcm_lab.render`: the containers run it with Debian's ``python3``.
"""

from __future__ import annotations

import json
from typing import Final

from pgcm_lab.render import render_template
from pgcm_lab.topology import PGBOUNCER_PORT, Node, Topology

__all__ = [
    "MASTER_KEY",
    "NAMESPACE",
    "NUDGE_SOCKET",
    "SUPERVISE_PORT",
    "TEMPLATE_PATH",
    "TOKEN",
    "render_pgbouncer_template",
    "render_pgcm_toml",
]

NAMESPACE: Final = "/pgcm"
MASTER_KEY: Final = "/master"
SUPERVISE_PORT: Final = 8080
# Lab only: a fixed token, so tests and people can call supervise by hand. Production
# passes it through PGCM_TOKEN from an EnvironmentFile (docs/configuration.md).
TOKEN: Final = "pgcm-lab-token"  # noqa: S105  # not a secret: a throw-away lab
TEMPLATE_PATH: Final = "/etc/pgbouncer/pgbouncer.ini.template"
NUDGE_SOCKET: Final = "/run/pgcm/supervise.sock"


def _toml(value: object) -> str:
    # JSON strings, numbers and lists of them are valid TOML values.
    return json.dumps(value)


def render_pgcm_toml(topology: Topology, node: Node) -> str:
    """Return the one TOML file configuring every pgcm service on ``node``."""
    topo = topology
    endpoints = [f"{n.address}:2379" for n in topo.nodes]
    supervise = [f"{n.address}:{SUPERVISE_PORT}" for n in topo.nodes]
    lines = [
        f"# pgcm for lab node {node.name} (written by pgcm_lab.pgcm).",
        "[cluster]",
        f"namespace = {_toml(NAMESPACE)}",
        f"master_key = {_toml(MASTER_KEY)}",
        "",
        "[etcd]",
        f"endpoints = {_toml(endpoints)}",
        "",
        "[pgbouncer]",
        'host = "/run/pgbouncer"',
        "port = 6432",
        'user = "postgres"',
        "",
        "[proxy]",
        'pgbouncer_config_file = "/etc/pgbouncer/pgbouncer.ini"',
        f"pgbouncer_config_template_file = {_toml(TEMPLATE_PATH)}",
        f"proxy_id = {_toml(node.name)}",
        'poll_interval = "5s"',
        "",
        "[failover]",
        f"endpoints = {_toml(supervise)}",
        f"token = {_toml(TOKEN)}",
        'pause_timeout = "5s"',
        # Generous: on a loaded 2-core machine PAF's demote + promote took up to ~15 s.
        'pause_expiry = "30s"',
        'settle_timeout = "60s"',
        'lock_ttl = "3s"',
        'status_max_age = "5s"',
        'poll_interval = "100ms"',
        "",
    ]
    if not node.is_app:
        addresses = ", ".join(f"{n.name} = {_toml(str(n.address))}" for n in topo.nodes)
        lines += [
            "[supervise]",
            f"bind_address = {_toml(f'{node.address}:{SUPERVISE_PORT}')}",
            f"token = {_toml(TOKEN)}",
            # A token without TLS: allowed only because the lab's links are namespaces
            # (or a compose bridge) on one machine.
            "insecure = true",
            f"node_name = {_toml(node.name)}",
            f"resource_id = {_toml(topo.resource)}",
            f"clone_id = {_toml(topo.clone)}",
            'address_source = "static"',
            f"node_addresses = {{ {addresses} }}",
            f"nudge_socket = {_toml(NUDGE_SOCKET)}",
            'nudge_socket_group = "haclient"',
            'postgres_dsn = "postgresql://postgres@/postgres?host=/run/postgresql"',
            'crm_mon_interval = "500ms"',
            'status_interval = "1s"',
            'status_lease_ttl = "5s"',
            "",
        ]
    return "\n".join(lines)


def render_pgbouncer_template(node: Node) -> str:
    """The lab's pgbouncer.ini for ``node`` with ``{{.Host}}`` where the primary goes.

    An explicit ``postgres`` database line is added beside the ``*`` fallback: the proxy
    confirms each named database with ``SHOW DATABASES`` before it acknowledges.

    The app node's PgBouncer routes to the primary node's **PgBouncer** (port 6432), not
    to PostgreSQL: pgcm-failover pauses the Postgres nodes' PgBouncers (through their
    supervise), so the app's in-flight queries wait in the paused PgBouncer and continue
    on the new primary after RESUME, instead of meeting the old primary's shutdown.
    """
    text = render_template(
        "pgbouncer.ini",
        {
            "node": node.name,
            "primary_host": "{{.Host}}",
            "listen_addr": f"{node.address},127.0.0.1",
        },
    )
    named = "postgres = host={{.Host}} port=5432 dbname=postgres\n"
    text = text.replace("[databases]\n", f"[databases]\n{named}", 1)
    return text.replace("port=5432", f"port={PGBOUNCER_PORT}") if node.is_app else text
