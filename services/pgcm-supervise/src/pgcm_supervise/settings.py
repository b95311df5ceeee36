"""Settings of pgcm-supervise: tables [supervise], [cluster], [etcd], [pgbouncer].

See docs/configuration.md for every key, its environment variable and the original's
name.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import ClassVar, Literal, Self, final

from pydantic import Field, SecretStr, field_validator, model_validator

from pgcm_common.etcd import EtcdSettings
from pgcm_common.hostport import BindAddress, parse_bind_address
from pgcm_common.pgbouncer import PgBouncerSettings
from pgcm_common.postgres import parse_dsn
from pgcm_common.settings import (
    ClusterSettings,
    Duration,
    LeaseTTL,
    NonEmptySecret,
    PgcmSettings,
    PositiveDuration,
)

__all__ = ["DEFAULT_NUDGE_SOCKET", "SuperviseSettings"]

DEFAULT_NUDGE_SOCKET = Path("/run/pgcm/supervise.sock")


def _is_loopback(bind_address: str) -> bool:
    host = parse_bind_address(bind_address).host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "", "0.0.0.0"-like wildcards and host names count as exposed


@final
class SuperviseSettings(PgcmSettings):
    """Everything pgcm-supervise needs, parsed once in ``cli.py``."""

    section: ClassVar[str] = "supervise"
    other_tables: ClassVar[frozenset[str]] = frozenset({"proxy", "failover"})
    original_keys: ClassVar[Mapping[str, str]] = {
        "bind-address": "bind_address",
        "pacemaker-poll-interval": "crm_mon_interval",
        "pacemaker-get-timeout": "crm_mon_timeout",
        "host-key-update-retry-interval": "retry_interval",
    }
    conversion_notes: ClassVar[Mapping[str, Sequence[str]]] = {
        "bind_address": (
            "The original's API had no authentication. pgcm-supervise refuses a non-loopback",
            "bind_address without TLS (tls_cert_file/tls_key_file) or a token, unless",
            "insecure = true: keep that only while the original's `pgcm failover` still calls it.",
            "insecure = true",
        ),
    }

    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    etcd: EtcdSettings = Field(default_factory=EtcdSettings)
    pgbouncer: PgBouncerSettings = Field(default_factory=PgBouncerSettings)

    bind_address: BindAddress = Field(
        default="127.0.0.1:8080",
        description="host:port of the failover gRPC API. A non-loopback address needs "
        "authentication (tls_client_ca_file or a token), and a token needs TLS, unless "
        "insecure = true.",
    )
    tls_cert_file: Path | None = Field(default=None, description="Server certificate (PEM).")
    tls_key_file: Path | None = Field(default=None, description="Server private key (PEM).")
    tls_client_ca_file: Path | None = Field(
        default=None,
        description="CA bundle that client certificates must chain to (enables mutual TLS).",
    )
    token: NonEmptySecret | None = Field(
        default=None,
        description="Bearer token every caller must send (authorization metadata); "
        "logged as caller 'token'.",
    )
    tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Named bearer tokens (caller name -> token); the name is logged as "
        "the caller of mutating calls. Use the file or environment, never flags.",
    )
    insecure: bool = Field(
        default=False,
        description="Allow a non-loopback bind address without authentication, and "
        "tokens without TLS (both send or accept credentials anyone can read or forge).",
    )
    node_name: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        description="This node's Pacemaker node name (default: the host name); names the "
        "NodeStatus key and the writer of the primary record.",
    )
    crm_mon_path: str = Field(
        default="crm_mon", min_length=1, description="crm_mon executable (name or path)."
    )
    command_prefix: list[str] = Field(
        default_factory=list,
        description="argv run before crm_mon and corosync-cfgtool (tests: nsenter into a "
        "node); empty in production.",
    )
    crm_mon_interval: PositiveDuration = Field(
        default=timedelta(milliseconds=500),
        description="Read Pacemaker's state and publish this often (a nudge from the alert "
        "agent reads at once).",
    )
    crm_mon_transition_interval: PositiveDuration = Field(
        default=timedelta(milliseconds=100),
        description="After the alert agent reports a promote, re-read Pacemaker this "
        "often (for up to 3s) until the new primary can be published.",
    )
    publish_on_promote_notice: bool = Field(
        default=True,
        description="Publish a node the alert agent reports promoted at once when the "
        "crm_mon read just before it (with quorum) showed that node promoting and nothing "
        "else promoted or demoting; false: wait for the next read.",
    )
    migrate_read_ahead: Duration = Field(
        default=timedelta(0),
        description="When set, a PAUSE starts a crm_mon read for the migrate that follows, "
        "which uses it when it started at most this long before (0s: off, migrate reads "
        "anew).",
    )
    crm_mon_timeout: Duration = Field(
        default=timedelta(seconds=5),
        description="Kill a crm_mon that has not answered within this time.",
    )
    resource_id: str = Field(
        default="pgsqld",
        min_length=1,
        description="Id of the PostgreSQL primitive (PAF: pgsqld) or of its promotable "
        "clone; the clone is found in crm_mon's output.",
    )
    clone_id: str | None = Field(
        default=None,
        description="Id of the promotable clone to move on migrate (default: the clone "
        "that contains resource_id, as crm_mon shows it).",
    )
    address_source: Literal["auto", "corosync", "static"] = Field(
        default="auto",
        description="Where the primary's address comes from: corosync (corosync-cfgtool "
        "-a <nodeid>), static (node_addresses), or auto (static when node_addresses is "
        "set, else corosync).",
    )
    corosync_cfgtool_path: str = Field(
        default="corosync-cfgtool", min_length=1, description="corosync-cfgtool executable."
    )
    node_addresses: dict[str, str] = Field(
        default_factory=dict,
        description="Static Pacemaker node name -> client address map (clouds often route "
        "clients on another network than the Corosync ring).",
    )
    retry_interval: Duration = Field(
        default=timedelta(seconds=1), description="Retry a failed etcd publication after this long."
    )
    reassert_interval: Duration = Field(
        default=timedelta(seconds=10),
        description="Check the primary's key in etcd at least this often even when "
        "Pacemaker's view has not changed, and re-write it when it is missing or different "
        "(a deleted key heals).",
    )
    status_interval: Duration = Field(
        default=timedelta(seconds=1),
        description="Re-write this node's NodeStatus at least this often (at once when "
        "Pacemaker's view changes); local PostgreSQL facts are read this often.",
    )
    status_lease_ttl: LeaseTTL = Field(
        default=timedelta(seconds=10),
        description="TTL of the lease the NodeStatus record is attached to: it vanishes "
        "this long after supervise dies.",
    )
    nudge_socket: Path | None = Field(
        default=DEFAULT_NUDGE_SOCKET,
        description="Unix datagram socket the Pacemaker alert agent nudges; unset disables it.",
    )
    nudge_socket_group: str | None = Field(
        default="haclient",
        description="Group that may write to the nudge socket (Pacemaker runs alert "
        "agents as hacluster:haclient); unset keeps the process's group.",
    )
    postgres_dsn: SecretStr | None = Field(
        default=None,
        description="libpq connection string of the local PostgreSQL, URL or key=value "
        "(e.g. 'postgresql:///postgres?host=/run/postgresql&user=postgres'); when set, "
        "NodeStatus carries recovery state, replication lag and the oldest transaction "
        "age. No TLS unless sslmode says so (disable, prefer, require, verify-ca, "
        "verify-full).",
    )
    postgres_timeout: Duration = Field(
        default=timedelta(seconds=2),
        description="Bound on connecting to and querying the local PostgreSQL.",
    )
    shutdown_grace: Duration = Field(
        default=timedelta(seconds=10),
        description="Bound on each shielded clean-up step at shutdown (resume PgBouncer, "
        "revoke the status lease); systemd's TimeoutStopSec must exceed it.",
    )
    max_pause_expiry: PositiveDuration = Field(
        default=timedelta(minutes=5),
        description="Longest pause (expiry, and PAUSE timeout) a caller may ask for; "
        "longer requests are refused. Every client of the node waits during a pause.",
    )
    hold_timeout: Duration = Field(
        default=timedelta(seconds=30),
        le=timedelta(minutes=2),
        description="When the published primary is lost (its node offline or unclean, "
        "its instance failed, none promoted) and this node's partition has quorum, "
        "proxies routed to it hold new transactions (PAUSE) for at most this long, until "
        "a new primary is published; 0 disables holding. At most 2 minutes.",
    )
    metrics_address: BindAddress | None = Field(
        default=None,
        description="host:port for Prometheus metrics, e.g. 127.0.0.1:8517 (pgcm-supervise's "
        "port; the packaged config sets it); unset means no metrics endpoint.",
    )

    @field_validator("postgres_dsn")
    @classmethod
    def _check_postgres_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        # Refused at load, not at the first probe: the message never repeats the string.
        if value is not None:
            parse_dsn(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _check_intervals(self) -> Self:
        if self.status_interval * 2 > self.status_lease_ttl:
            raise ValueError("status_interval must be at most half of status_lease_ttl")
        for name, token in self.tokens.items():
            # show-config prints dict secrets masked; a config copied from it must not
            # silently accept "**********" as a real token.
            if not token.get_secret_value().strip("*"):
                raise ValueError(f"tokens.{name} is empty or a masked placeholder")
        if self.address_source == "static" and not self.node_addresses:
            raise ValueError("address_source = 'static' needs node_addresses")
        return self

    @model_validator(mode="after")
    def _check_security(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        if self.insecure or _is_loopback(self.bind_address):
            return self
        tokens = self.token is not None or bool(self.tokens)
        if not (tokens or self.tls_client_ca_file is not None):
            raise ValueError(
                f"bind_address: {self.bind_address!r} is not loopback and callers "
                "are not authenticated: set tls_client_ca_file (mutual TLS) or a token "
                "with tls_cert_file/tls_key_file, or insecure = true"
            )
        if tokens and self.tls_cert_file is None:
            # Callers would send the bearer token across the network in clear text.
            raise ValueError(
                f"bind_address: {self.bind_address!r} is not loopback and "
                "token/tokens need TLS (tls_cert_file and tls_key_file), or callers send "
                "them in clear text; set insecure = true to allow it"
            )
        return self
