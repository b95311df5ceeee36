"""Settings of pgcm-failover: tables [failover], [cluster] and [etcd].

Every timeout of the original is here, with sub-second precision (``"500ms"``). See
docs/configuration.md for every key, its environment variable and the original's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import ClassVar, Self, final

from pydantic import Field, SecretStr, model_validator

from pgcm_common.etcd import EtcdSettings
from pgcm_common.settings import (
    CLUSTER_ORIGINAL_KEYS,
    ETCD_ORIGINAL_KEYS,
    ClusterSettings,
    Duration,
    PgcmSettings,
)

__all__ = ["FailoverSettings"]


@final
class FailoverSettings(PgcmSettings):
    """Everything pgcm-failover needs, parsed once in ``cli.py``."""

    section: ClassVar[str] = "failover"
    original_keys: ClassVar[Mapping[str, str]] = {
        **CLUSTER_ORIGINAL_KEYS,
        **ETCD_ORIGINAL_KEYS,
        "failover-api-endpoints": "endpoints",
    }

    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    etcd: EtcdSettings = Field(default_factory=EtcdSettings)

    endpoints: list[str] = Field(
        default_factory=lambda: ["pg01:8080", "pg02:8080", "pg03:8080"],
        min_length=1,
        description="host:port of every pgcm-supervise failover API.",
    )
    lock_key: str = Field(
        default="/failover/lock",
        min_length=1,
        description="Key under the namespace of the lease-based switchover lock.",
    )
    health_check_timeout: Duration = Field(
        default=timedelta(seconds=2), description="Bound on each supervise health check."
    )
    lock_timeout: Duration = Field(
        default=timedelta(seconds=5), description="Bound on acquiring the switchover lock in etcd."
    )
    pause_timeout: Duration = Field(
        default=timedelta(seconds=5),
        description="Bound on pausing every PgBouncer; clients wait at most this long for it.",
    )
    pause_expiry: Duration = Field(
        default=timedelta(seconds=25),
        description="Each PgBouncer resumes by itself this long after its pause (safety belt).",
    )
    resume_timeout: Duration = Field(
        default=timedelta(seconds=5), description="Bound on resuming every PgBouncer."
    )
    pacemaker_timeout: Duration = Field(
        default=timedelta(seconds=20),
        description="Bound on a migrate/unmigrate call (issuing the move, not its effect).",
    )
    tls_ca_file: Path | None = Field(
        default=None, description="CA bundle to verify supervise's certificate (enables TLS)."
    )
    tls_cert_file: Path | None = Field(
        default=None, description="Client certificate for mutual TLS (PEM)."
    )
    tls_key_file: Path | None = Field(default=None, description="Client private key (PEM).")
    token: SecretStr | None = Field(default=None, description="Bearer token sent to supervise.")

    @model_validator(mode="after")
    def _check_timeouts(self) -> Self:
        if self.pause_expiry <= self.pause_timeout:
            raise ValueError("pause_expiry must be longer than pause_timeout")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        return self
