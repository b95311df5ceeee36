"""The lab's shape: node names, addresses and the paths every node uses.

One description of the topology serves the network-namespace lab and the compose
cluster, so both get the same names, addresses and files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Final, final

__all__ = [
    "AGENTS",
    "APP_NODE",
    "CLONE",
    "CLUSTER_NAME",
    "ETCD_CLIENT_PORT",
    "ETCD_PEER_PORT",
    "LEGACY_AGENT",
    "LEGACY_CLONE",
    "LEGACY_RESOURCE",
    "PGBOUNCER_PORT",
    "PGDATA",
    "PG_BINDIR",
    "PG_NODE_CONF",
    "POSTGRES_PORT",
    "RESOURCE",
    "Node",
    "Topology",
]

CLUSTER_NAME: Final = "pgcmlab"
PG_BINDIR: Final = "/usr/lib/postgresql/15/bin"
PGDATA: Final = "/var/lib/postgresql/15/main"
PG_NODE_CONF: Final = "/var/lib/postgresql/pgcm-node.conf"
RESOURCE: Final = "pgsqld"
CLONE: Final = "pgsql-ha"
LEGACY_AGENT: Final = "pgsql"
# The names the original pgsql-cluster-manager hard-codes for the legacy agent's clone.
LEGACY_RESOURCE: Final = "pgsql"
LEGACY_CLONE: Final = "msPostgresql"
AGENTS: Final = ("pgsqlms", LEGACY_AGENT)
POSTGRES_PORT: Final = 5432
PGBOUNCER_PORT: Final = 6432
ETCD_CLIENT_PORT: Final = 2379
ETCD_PEER_PORT: Final = 2380
APP_NODE: Final = "app"
_FIRST_HOST: Final = 10
_APP_HOST: Final = 100
_MAX_NODES: Final = 9


@final
@dataclass(frozen=True, slots=True)
class Node:
    """One machine of the lab: a Postgres node (``n1``…) or the app node."""

    name: str
    address: IPv4Address
    nodeid: int = 0

    @property
    def is_app(self) -> bool:
        """Whether this is the app node (PgBouncer and clients, no database)."""
        return self.name == APP_NODE


@final
@dataclass(frozen=True, slots=True)
class Topology:
    """The Postgres nodes, the app node and the cluster timings.

    Attributes:
        size: number of Postgres nodes (3 by default, at most 9).
        network: the lab subnet; node ``nK`` gets host ``10 + K``, the app node ``100``.
        token_ms: Corosync's token timeout.
        dc_deadtime: Pacemaker's ``dc-deadtime``, pre-seeded in the CIB so the first DC
            election does not wait the default 20 s.
        monitor_promoted: PAF monitor interval of the primary (it also sets the scores).
        monitor_unpromoted: PAF monitor interval of the standbys.
        agent: the resource agent managing PostgreSQL: ``pgsqlms`` (PAF, the default) or
            ``pgsql`` (the legacy ``ocf:heartbeat:pgsql``, with the clone named
            ``msPostgresql`` as the original pgsql-cluster-manager expects).
    """

    size: int = 3
    network: IPv4Network = field(default_factory=lambda: IPv4Network("10.250.0.0/24"))
    token_ms: int = 1000
    dc_deadtime: str = "2s"
    monitor_promoted: str = "3s"
    monitor_unpromoted: str = "4s"
    agent: str = "pgsqlms"

    def __post_init__(self) -> None:
        if not 1 <= self.size <= _MAX_NODES:
            msg = f"the lab has 1 to {_MAX_NODES} Postgres nodes, not {self.size}"
            raise ValueError(msg)
        if self.agent not in AGENTS:
            msg = f"unknown resource agent {self.agent!r}: one of {', '.join(AGENTS)}"
            raise ValueError(msg)

    @property
    def legacy(self) -> bool:
        """Whether PostgreSQL runs under the legacy ``ocf:heartbeat:pgsql`` agent."""
        return self.agent == LEGACY_AGENT

    @property
    def resource(self) -> str:
        """The PostgreSQL primitive's id."""
        return LEGACY_RESOURCE if self.legacy else RESOURCE

    @property
    def clone(self) -> str:
        """The promotable clone's id."""
        return LEGACY_CLONE if self.legacy else CLONE

    @property
    def nodes(self) -> tuple[Node, ...]:
        """The Postgres nodes, ``n1`` first."""
        base = self.network.network_address
        return tuple(
            Node(f"n{k}", base + _FIRST_HOST + k, nodeid=k) for k in range(1, self.size + 1)
        )

    @property
    def app(self) -> Node:
        """The app node."""
        return Node(APP_NODE, self.network.network_address + _APP_HOST)

    @property
    def all_nodes(self) -> tuple[Node, ...]:
        """Every node, the app node last."""
        return (*self.nodes, self.app)

    def node(self, name: str) -> Node:
        """Return the node called ``name`` (``n2``, ``2`` or ``app``).

        Raises:
            KeyError: no such node.
        """
        wanted = f"n{name}" if name.isdigit() else name
        for node in self.all_nodes:
            if node.name == wanted:
                return node
        raise KeyError(name)

    def others(self, name: str) -> tuple[Node, ...]:
        """The Postgres nodes other than ``name``."""
        return tuple(node for node in self.nodes if node.name != name)
