"""How a node is provisioned: its role, its pgcm packages and the commands that set it up.

One definition for both ways the lab runs: the netns lab (:mod:`pgcm_lab.lab`, which
runs these commands inside its namespaces) and the compose containers
(:mod:`pgcm_lab.node`, which runs them as the container's main program). Standard
library only: the containers run it with Debian's ``python3`` and no third-party package.

The order, in both: start Corosync + Pacemaker (a CIB without resources, so no probe
disturbs the bootstrap), etcd and PgBouncer while PostgreSQL is bootstrapped on the
first node (:func:`initdb_argv`, :func:`bootstrap_start_argv`, :data:`CREATE_REPLICATOR`)
and cloned to the others (:func:`clone_argv`, then ``standby.signal``); stop the
bootstrap server (:func:`stop_argv`); add the PAF clone (:func:`release_clone_argv`) and
the pgcm alert agent (:func:`alerts_xml`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from pgcm_lab.render import render_cib_resources
from pgcm_lab.topology import PG_BINDIR, PGDATA, Node, Topology

__all__ = [
    "ALERT_AGENT",
    "ALERT_ID",
    "CREATE_REPLICATOR",
    "DAEMONS",
    "PACEMAKER_ENV",
    "PACKAGES",
    "alerts_xml",
    "bootstrap_start_argv",
    "clone_argv",
    "corosync_argv",
    "daemons",
    "initdb_argv",
    "packages",
    "pgbouncer_argv",
    "register_alerts_argvs",
    "release_clone_argv",
    "role",
    "stop_argv",
]

# What each role installs and runs: a Postgres node publishes the primary (supervise) and
# keeps its own PgBouncer pointed at it (proxy); the app node keeps its PgBouncer pointed
# (proxy) and is where the operator runs pgcm-failover.
PACKAGES: Final[Mapping[str, tuple[str, ...]]] = {
    "db": ("pgcm-supervise", "pgcm-proxy"),
    "app": ("pgcm-proxy", "pgcm-failover"),
}
# The long-running pgcm services of each role (pgcm-failover is a command, not a daemon).
DAEMONS: Final[Mapping[str, tuple[str, ...]]] = {
    "db": ("pgcm-supervise", "pgcm-proxy"),
    "app": ("pgcm-proxy",),
}
# Where the pgcm-supervise package installs the Pacemaker alert agent.
ALERT_AGENT: Final = "/usr/libexec/pgcm/pgcm-alert-agent"
ALERT_ID: Final = "pgcm"
PACEMAKER_ENV: Final[Mapping[str, str]] = {
    "PCMK_logfacility": "none",
    "PCMK_logfile": "/var/log/pacemaker/pacemaker.log",
}
# synchronous_standby_names is set in the file: the bootstrap server runs with it empty,
# or CREATE ROLE would wait forever for a standby that does not exist yet.
CREATE_REPLICATOR: Final = "CREATE ROLE replicator LOGIN REPLICATION"


def role(node: Node) -> str:
    """Return ``app`` for the app node, ``db`` for a Postgres node."""
    return "app" if node.is_app else "db"


def packages(node: Node) -> tuple[str, ...]:
    """The pgcm packages installed on ``node``."""
    return PACKAGES[role(node)]


def daemons(node: Node) -> tuple[str, ...]:
    """The pgcm services running on ``node``."""
    return DAEMONS[role(node)]


def corosync_argv() -> list[str]:
    """Corosync in the foreground (its parent supervises it)."""
    return ["corosync", "-f"]


def pgbouncer_argv() -> list[str]:
    """PgBouncer with the rendered configuration (run as ``postgres``)."""
    return ["pgbouncer", "/etc/pgbouncer/pgbouncer.ini"]


def initdb_argv() -> list[str]:
    """The first node's initdb (run as ``postgres``)."""
    return [f"{PG_BINDIR}/initdb", "-D", PGDATA, "-A", "trust", "-U", "postgres", "--no-sync"]


def bootstrap_start_argv() -> list[str]:
    """Start the bootstrap server with no synchronous standby (run as ``postgres``)."""
    return [f"{PG_BINDIR}/pg_ctl", "-D", PGDATA, "-w", "-l",
            "/var/log/postgresql/bootstrap.log", "-o", "-c synchronous_standby_names=''",
            "start"]  # fmt: skip


def clone_argv(source: Node) -> list[str]:
    """Clone ``source``'s data directory into this node's (run as ``postgres``)."""
    return [f"{PG_BINDIR}/pg_basebackup", "-h", str(source.address), "-U", "replicator",
            "-D", PGDATA, "-X", "stream", "-c", "fast"]  # fmt: skip


def stop_argv() -> list[str]:
    """Stop the bootstrap server before Pacemaker takes PostgreSQL over."""
    return [f"{PG_BINDIR}/pg_ctl", "-D", PGDATA, "-w", "-m", "fast", "stop"]


def release_clone_argv(topology: Topology, *, fencing: bool = False) -> list[str]:
    """Add the PAF clone to the CIB (once every data directory is in place).

    ``fencing``: a failed monitor of the primary fences its node (the netns lab fences;
    the compose cluster does not).
    """
    resources = render_cib_resources(topology, fencing=fencing)
    return ["cibadmin", "--create", "-o", "resources", "-X", resources]


def alerts_xml(agent: str, recipient: str, resource: str) -> str:
    """The CIB ``<alerts>`` section running ``agent`` with ``recipient`` (the nudge socket)."""
    return (
        f'<alerts><alert id="{ALERT_ID}" path="{agent}">'
        f'<meta_attributes id="{ALERT_ID}-meta">'
        f'<nvpair id="{ALERT_ID}-meta-timeout" name="timeout" value="5s"/>'
        "</meta_attributes>"
        f'<instance_attributes id="{ALERT_ID}-attrs">'
        f'<nvpair id="{ALERT_ID}-attrs-resources" name="pgcm_resources" value="{resource}"/>'
        "</instance_attributes>"
        "<select><select_resources/></select>"
        f'<recipient id="{ALERT_ID}-recipient" value="{recipient}"/>'
        "</alert></alerts>"
    )


def register_alerts_argvs(xml: str) -> tuple[list[str], list[str]]:
    """Two ways to put ``xml`` in the CIB: replace the section, or create it.

    A fresh CIB has no alerts section, and replacing a missing one fails: run the first
    and fall back to the second.
    """
    return (
        ["cibadmin", "--replace", "--scope", "alerts", "--xml-text", xml],
        ["cibadmin", "--create", "--scope", "configuration", "--xml-text", xml],
    )
