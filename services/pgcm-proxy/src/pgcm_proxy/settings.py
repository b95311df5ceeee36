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

from pydantic import Field, field_validator, model_validator

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

__all__ = ["ProxySettings", "split_host_port"]

_PORT_LIMIT = 65536


@final
class ProxySettings(PgcmSettings):
    """Everything pgcm-proxy needs, parsed once in ``cli.py``."""

    section: ClassVar[str] = "proxy"
    original_keys: ClassVar[Mapping[str, str]] = {
        **CLUSTER_ORIGINAL_KEYS,
        **ETCD_ORIGINAL_KEYS,
        **PGBOUNCER_ORIGINAL_KEYS,
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
    poll_interval: Duration = Field(
        default=timedelta(minutes=1),
        description="Re-read the primary's key this often as a safety net beside the watch.",
    )
    retry_interval: Duration = Field(
        default=timedelta(milliseconds=100),
        description="First delay before retrying a failed apply (doubles, with jitter).",
    )
    retry_max_interval: Duration = Field(
        default=timedelta(seconds=5),
        description="Longest delay between retries of a failed apply.",
    )
    ack_lease_ttl: Duration = Field(
        default=timedelta(seconds=10),
        description="TTL of the lease holding <namespace>/proxies/<id>: a killed proxy's "
        "acknowledgement vanishes this long after its last keepalive.",
    )
    apply_timeout: Duration = Field(
        default=timedelta(seconds=10),
        description="Bound on one apply attempt (write, RELOAD, SHOW DATABASES, ack); a "
        "hung PgBouncer or etcd is then retried with backoff.",
    )
    metrics_address: str | None = Field(
        default=None,
        description="host:port for Prometheus metrics, e.g. 127.0.0.1:8518 (pgcm-proxy's "
        "port; the packaged config sets it); unset means no metrics endpoint.",
    )

    @field_validator("poll_interval", "retry_interval", "apply_timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be positive")
        return value

    @field_validator("ack_lease_ttl")
    @classmethod
    def _whole_seconds(cls, value: timedelta) -> timedelta:
        # etcd leases have whole-second TTLs; below 2 s a keepalive every TTL/3 races
        # the expiry on a loaded host.
        if value < timedelta(seconds=2):
            raise ValueError("must be at least 2s")
        return value

    @field_validator("metrics_address")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value

    @model_validator(mode="after")
    def _retry_bounds(self) -> ProxySettings:
        if self.retry_max_interval < self.retry_interval:
            raise ValueError("retry_max_interval must not be shorter than retry_interval")
        return self

    @property
    def metrics_endpoint(self) -> tuple[str, int] | None:
        """Return ``metrics_address`` as (host, port), or None when metrics are off."""
        return None if self.metrics_address is None else split_host_port(self.metrics_address)


def split_host_port(text: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6; an empty host means every address).

    Raises:
        ValueError: no port, or the port is not a number in 1-65535.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < _PORT_LIMIT:
        raise ValueError(f"expected host:port, got {text!r}")
    return host.removeprefix("[").removesuffix("]"), int(port_text)
