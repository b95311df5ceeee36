"""Connection settings for etcd, shared by every service."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import ClassVar, Literal, final
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from pgcm_common.settings import Duration, PositiveDuration

__all__ = ["EtcdEndpoint", "EtcdSettings"]

# An idle watch proves its member alive with one read per keepalive_time: every proxy
# of a fleet does, so the floor keeps that load on etcd small. (It also keeps the
# meaning the setting had for gRPC clients, whose pings etcd refuses more often.)
MIN_KEEPALIVE_TIME = timedelta(seconds=5)
_DEFAULT_PORT = 2379


@final
@dataclass(frozen=True, slots=True)
class EtcdEndpoint:
    """One etcd member's client address, parsed from ``host:port`` or a URL."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, text: str) -> EtcdEndpoint:
        """Parse ``host:port``, ``http://host:port`` or ``https://host:port``.

        Raises:
            ValueError: the text is not an endpoint.
        """
        raw = text.strip()
        if not raw:
            raise ValueError("empty endpoint")
        url = urlsplit(raw if "://" in raw else f"//{raw}")
        if url.scheme not in {"", "http", "https"}:
            raise ValueError(f"unsupported scheme {url.scheme!r} in endpoint {text!r}")
        if url.path not in {"", "/"} or url.query or url.fragment:
            raise ValueError(f"endpoint {text!r} must not have a path or query")
        try:
            port = url.port or _DEFAULT_PORT
        except ValueError as exc:
            raise ValueError(f"bad port in endpoint {text!r}") from exc
        if not url.hostname:
            raise ValueError(f"no host in endpoint {text!r}")
        return cls(host=url.hostname, port=port, tls=url.scheme == "https")

    @property
    def target(self) -> str:
        """Return ``host:port`` (IPv6 hosts in brackets), as in an HTTP ``Host`` header."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return self.target


@final
class EtcdSettings(BaseModel):
    """How to reach etcd: endpoints, credentials, TLS and timeouts.

    Durations use the shared ``Duration`` type: Go-style strings such as ``"2s"`` or
    ``"500ms"``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The original's flag names of these settings (the [etcd] table of every service).
    original_keys: ClassVar[Mapping[str, str]] = {
        "etcd-endpoints": "endpoints",
        "etcd-dial-timeout": "dial_timeout",
        "etcd-timeout": "request_timeout",
        "etcd-dial-keep-alive-time": "keepalive_time",
        "etcd-keep-alive-time": "keepalive_time",
        "etcd-dial-keep-alive-timeout": "keepalive_timeout",
        "etcd-keep-alive-timeout": "keepalive_timeout",
    }

    endpoints: list[str] = Field(
        default_factory=lambda: ["127.0.0.1:2379"],
        min_length=1,
        description="etcd client endpoints, host:port or http(s)://host:port; tried in order",
    )
    username: str | None = Field(default=None, description="etcd user (needs password)")
    password: SecretStr | None = Field(default=None, description="etcd user's password")
    ca_file: Path | None = Field(default=None, description="CA bundle; enables TLS")
    cert_file: Path | None = Field(
        default=None,
        description="client certificate (mutual TLS; needs ca_file or https:// endpoints)",
    )
    key_file: Path | None = Field(default=None, description="client key (mutual TLS)")
    transport: Literal["auto", "gateway", "grpc"] = Field(
        default="auto",
        description=(
            "how to talk to etcd: gateway (its JSON gateway over HTTP/1.1, the lighter),"
            " grpc (its gRPC API over HTTP/2, needed for a client certificate with a"
            " CommonName, which the gateway refuses), or auto: grpc exactly when cert_file"
            " has a CommonName in its subject"
        ),
    )
    dial_timeout: PositiveDuration = Field(
        default=timedelta(seconds=2), description="bound on connecting to one endpoint"
    )
    request_timeout: PositiveDuration = Field(
        default=timedelta(seconds=5), description="bound on one unary etcd request"
    )
    hedge_delay: PositiveDuration = Field(
        default=timedelta(milliseconds=500),
        description=(
            "a read unanswered this long is also sent to the next endpoint (first answer"
            " wins, later calls go there; one that failed is asked again after as long);"
            " a write or watch unanswered this long makes the member prove it is alive"
            " within the same time, else the next endpoint is used"
        ),
    )
    keepalive_time: Duration = Field(
        default=timedelta(seconds=6),
        description=("an idle watch silent this long makes its member answer a read (at least 5s)"),
    )
    keepalive_timeout: PositiveDuration = Field(
        default=timedelta(seconds=2),
        description="how long that read may take before the watch moves to the next endpoint",
    )

    @field_validator("endpoints")
    @classmethod
    def _endpoints_parse(cls, value: list[str]) -> list[str]:
        for endpoint in value:
            EtcdEndpoint.parse(endpoint)
        return value

    @field_validator("keepalive_time")
    @classmethod
    def _keepalive_not_too_often(cls, value: timedelta) -> timedelta:
        if value < MIN_KEEPALIVE_TIME:
            raise ValueError("must be at least 5s: every idle watch probes etcd this often")
        return value

    @model_validator(mode="after")
    def _pairs_complete(self) -> EtcdSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password must be given together")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        if self.cert_file is not None and not self.use_tls:
            # Without TLS the client certificate would never be presented: the
            # connection would silently be plain text, the opposite of what was asked.
            raise ValueError(
                "cert_file and key_file need TLS: set ca_file or use https:// endpoints"
            )
        return self

    @property
    def parsed_endpoints(self) -> tuple[EtcdEndpoint, ...]:
        """Return the endpoints, parsed, in the order they are tried."""
        return tuple(EtcdEndpoint.parse(endpoint) for endpoint in self.endpoints)

    @property
    def use_tls(self) -> bool:
        """Return whether connections are encrypted (a CA file or an https endpoint)."""
        return self.ca_file is not None or any(e.tls for e in self.parsed_endpoints)
