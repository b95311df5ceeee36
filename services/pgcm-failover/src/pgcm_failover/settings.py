"""Settings of pgcm-failover: tables [failover], [cluster] and [etcd].

Every timeout of the original is here, with sub-second precision (``"500ms"``). See
docs/configuration.md for every key, its environment variable and the original's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import ClassVar, Self, final

from pydantic import Field, model_validator

from pgcm_common.etcd import EtcdSettings
from pgcm_common.hostport import HostPortText
from pgcm_common.settings import (
    ClusterSettings,
    Duration,
    LeaseTTL,
    NonEmptySecret,
    PgcmSettings,
    PositiveDuration,
)

__all__ = ["FailoverSettings"]


@final
class FailoverSettings(PgcmSettings):
    """Everything pgcm-failover needs, parsed once in ``cli.py``."""

    section: ClassVar[str] = "failover"
    other_tables: ClassVar[frozenset[str]] = frozenset({"proxy", "supervise"})
    original_keys: ClassVar[Mapping[str, str]] = {
        "failover-api-endpoints": "endpoints",
        "health-check-timeout": "health_check_timeout",
        "lock-timeout": "lock_timeout",
        "pause-timeout": "pause_timeout",
        "pause-expiry": "pause_expiry",
        "resume-timeout": "resume_timeout",
        "pacemaker-timeout": "pacemaker_timeout",
    }

    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    etcd: EtcdSettings = Field(default_factory=EtcdSettings)

    endpoints: list[HostPortText] = Field(
        default_factory=lambda: ["pg01:8080", "pg02:8080", "pg03:8080"],
        min_length=1,
        description="host:port of every pgcm-supervise failover API.",
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
    proxy_ack_timeout: PositiveDuration = Field(
        default=timedelta(seconds=5),
        description="After etcd names the new primary, wait this long for every live "
        "pgcm-proxy's acknowledgement; proxies still silent then (a frozen app node) are "
        "reported and clients are resumed anyway: one sick proxy must not hold every "
        "client. Their PgBouncers follow when they recover.",
    )
    pacemaker_timeout: Duration = Field(
        default=timedelta(seconds=20),
        description="Bound on a migrate/unmigrate call (issuing the move, not its effect; "
        "waiting for the effect is bounded by pause_expiry and settle_timeout).",
    )
    settle_timeout: Duration = Field(
        default=timedelta(seconds=30),
        description="Bound on Pacemaker settling after the move (PAF: target promoted with "
        "the top score, nobody else, no standby negative; legacy pgsql agent: target "
        "promoted and alone with data-status LATEST) before the constraint is cleared.",
    )
    cleanup_grace: Duration = Field(
        default=timedelta(seconds=10),
        description="Each undo step (resume, unmigrate, unlock) gets this long, also after "
        "Ctrl-C; unmigrate gets settle_timeout on top, to wait for Pacemaker to settle.",
    )
    lock_ttl: LeaseTTL = Field(
        default=timedelta(seconds=5),
        description="TTL of the lock's etcd lease (at least 2s, the shortest lease etcd "
        "grants): a killed pgcm-failover frees the lock within this long.",
    )
    status_max_age: Duration = Field(
        default=timedelta(seconds=10),
        description="NodeStatus records older than this are ignored (their supervise is "
        "stuck or gone).",
    )
    poll_interval: PositiveDuration = Field(
        default=timedelta(milliseconds=250),
        description="How often pre-flight/settle re-read the NodeStatus records.",
    )
    max_lag_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=0,
        description="Largest replication lag of the target (bytes) that counts as "
        "caught up, when supervise publishes PostgreSQL facts.",
    )
    history_limit: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="How many switchover records 'pgcm-failover history' keeps in etcd "
        "(the oldest beyond this are deleted after each run).",
    )
    tls_ca_file: Path | None = Field(
        default=None, description="CA bundle to verify supervise's certificate (enables TLS)."
    )
    tls_cert_file: Path | None = Field(
        default=None, description="Client certificate for mutual TLS (PEM)."
    )
    tls_key_file: Path | None = Field(default=None, description="Client private key (PEM).")
    token: NonEmptySecret | None = Field(
        default=None, description="Bearer token sent to supervise."
    )

    @model_validator(mode="after")
    def _check_timeouts(self) -> Self:
        if self.pause_expiry <= self.pause_timeout:
            raise ValueError("pause_expiry must be longer than pause_timeout")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        return self
