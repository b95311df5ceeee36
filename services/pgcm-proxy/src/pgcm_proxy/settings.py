"""Settings of pgcm-proxy: tables [proxy], [cluster], [etcd] and [pgbouncer].

See docs/configuration.md for every key, its environment variable and the original's
name.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import ClassVar, final

from pydantic import Field, model_validator

from pgcm_common.etcd import EtcdSettings
from pgcm_common.hostport import BindAddress
from pgcm_common.pgbouncer import PgBouncerSettings
from pgcm_common.settings import (
    ClusterSettings,
    Duration,
    LeaseTTL,
    PgcmSettings,
    PositiveDuration,
)

__all__ = ["ProxySettings"]


@final
class ProxySettings(PgcmSettings):
    """Everything pgcm-proxy needs, parsed once in ``cli.py``."""

    section: ClassVar[str] = "proxy"
    other_tables: ClassVar[frozenset[str]] = frozenset({"supervise", "failover"})
    original_keys: ClassVar[Mapping[str, str]] = {
        "pgbouncer-config-file": "pgbouncer_config_file",
        "pgbouncer-config-template-file": "pgbouncer_config_template_file",
        "etcd-stream-poll-interval": "poll_interval",
        # The original declared pgbouncer-retry-interval but read pgbouncer-retry-timeout
        # (so the flag did nothing); both spellings now set the backoff cap.
        "pgbouncer-retry-interval": "retry_max_interval",
        "pgbouncer-retry-timeout": "retry_max_interval",
    }

    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    etcd: EtcdSettings = Field(default_factory=EtcdSettings)
    pgbouncer: PgBouncerSettings = Field(default_factory=PgBouncerSettings)

    pgbouncer_config_file: Path = Field(
        default=Path("/etc/pgbouncer/pgbouncer.ini"),
        description="PgBouncer config file that the proxy writes (atomically).",
    )
    pgbouncer_config_template_file: Path = Field(
        default=Path("/etc/pgbouncer/pgbouncer.ini.template"),
        description="Template of that file; {{.Host}} is replaced by the primary's address.",
    )
    proxy_id: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        description="Name of this proxy in its acknowledgement key <namespace>/proxies/<id>.",
    )
    poll_interval: PositiveDuration = Field(
        default=timedelta(minutes=1),
        description="Re-read the primary's key this often as a safety net beside the watch.",
    )
    retry_interval: PositiveDuration = Field(
        default=timedelta(milliseconds=100),
        description="First delay before retrying a failed apply (doubles, with jitter).",
    )
    retry_max_interval: Duration = Field(
        default=timedelta(seconds=5),
        description="Longest delay between retries of a failed apply.",
    )
    ack_lease_ttl: LeaseTTL = Field(
        default=timedelta(seconds=10),
        description="TTL of the lease holding <namespace>/proxies/<id>: a killed proxy's "
        "acknowledgement vanishes this long after its last keepalive.",
    )
    apply_timeout: PositiveDuration = Field(
        default=timedelta(seconds=10),
        description="Bound on one apply attempt (write, RELOAD, SHOW DATABASES, ack); a "
        "hung PgBouncer or etcd is then retried with backoff.",
    )
    hold_limit: Duration = Field(
        default=timedelta(minutes=1),
        le=timedelta(minutes=5),
        description="Longest time this proxy holds new transactions (PgBouncer paused) "
        "while supervise reports the primary it routes to as lost, whatever the hold "
        "record in etcd says; 0 disables holding here. At most 5 minutes.",
    )
    metrics_address: BindAddress | None = Field(
        default=None,
        description="host:port for Prometheus metrics, e.g. 127.0.0.1:8518 (pgcm-proxy's "
        "port; the packaged config sets it); unset means no metrics endpoint.",
    )

    @model_validator(mode="after")
    def _retry_bounds(self) -> ProxySettings:
        if self.retry_max_interval < self.retry_interval:
            raise ValueError("retry_max_interval must not be shorter than retry_interval")
        return self
