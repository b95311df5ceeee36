"""Settings of pgcm-supervise: tables [supervise], [cluster], [etcd], [pgbouncer].

See docs/configuration.md for every key, its environment variable and the original's
name.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import ClassVar, Self, final

from pydantic import Field, SecretStr, model_validator

from pgcm_common.etcd import EtcdSettings
from pgcm_common.pgbouncer import PgBouncerSettings
from pgcm_common.settings import (
    CLUSTER_ORIGINAL_KEYS,
    ETCD_ORIGINAL_KEYS,
    PGBOUNCER_ORIGINAL_KEYS,
    ClusterSettings,
    Duration,
    PgcmSettings,
)

__all__ = ["SuperviseSettings"]


def _is_loopback(bind_address: str) -> bool:
    host = bind_address.rpartition(":")[0].strip("[]")
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
    original_keys: ClassVar[Mapping[str, str]] = {
        **CLUSTER_ORIGINAL_KEYS,
        **ETCD_ORIGINAL_KEYS,
        **PGBOUNCER_ORIGINAL_KEYS,
        "pacemaker-poll-interval": "crm_mon_interval",
        "pacemaker-get-timeout": "crm_mon_timeout",
        "host-key-update-retry-interval": "retry_interval",
    }

    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    etcd: EtcdSettings = Field(default_factory=EtcdSettings)
    pgbouncer: PgBouncerSettings = Field(default_factory=PgBouncerSettings)

    bind_address: str = Field(
        default="127.0.0.1:8080",
        description="host:port of the failover gRPC API. A non-loopback address needs "
        "TLS or a token, or insecure = true.",
    )
    tls_cert_file: Path | None = Field(default=None, description="Server certificate (PEM).")
    tls_key_file: Path | None = Field(default=None, description="Server private key (PEM).")
    tls_client_ca_file: Path | None = Field(
        default=None,
        description="CA bundle that client certificates must chain to (enables mutual TLS).",
    )
    token: SecretStr | None = Field(
        default=None,
        description="Bearer token every caller must send (authorization metadata).",
    )
    insecure: bool = Field(
        default=False,
        description="Allow a non-loopback bind address without TLS or token.",
    )
    crm_mon_path: str = Field(
        default="crm_mon", min_length=1, description="crm_mon executable (name or path)."
    )
    crm_mon_interval: Duration = Field(
        default=timedelta(seconds=1), description="Read Pacemaker's state this often."
    )
    crm_mon_timeout: Duration = Field(
        default=timedelta(seconds=5),
        description="Kill a crm_mon that has not answered within this time.",
    )
    resource_id: str = Field(
        default="pgsql-ha",
        min_length=1,
        description="Id of the promotable clone (or its primitive) that runs PostgreSQL.",
    )
    node_addresses: dict[str, str] = Field(
        default_factory=dict,
        description="Static Pacemaker node name -> client address map; empty means ask "
        "corosync-cfgtool.",
    )
    retry_interval: Duration = Field(
        default=timedelta(seconds=1), description="Retry a failed etcd publication after this long."
    )
    reassert_interval: Duration = Field(
        default=timedelta(seconds=10),
        description="Re-write the primary's key this often so a deleted key heals.",
    )
    metrics_address: str | None = Field(
        default=None,
        description="host:port for Prometheus metrics; unset means no metrics endpoint.",
    )

    @model_validator(mode="after")
    def _check_security(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        secured = self.tls_cert_file is not None or self.token is not None
        if not (secured or self.insecure or _is_loopback(self.bind_address)):
            raise ValueError(
                f"bind_address {self.bind_address!r} is not loopback: set tls_cert_file/"
                "tls_key_file or token, or insecure = true"
            )
        return self
