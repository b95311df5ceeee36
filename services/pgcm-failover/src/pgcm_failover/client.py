"""The failover CLI's side of the wire: one :class:`SuperviseEndpoint` per pgcm-supervise.

It speaks the original's ``failover.Failover`` service over grpclib, optionally with TLS
(a CA bundle to verify the server, a client certificate for mutual TLS, ALPN ``h2``)
and a bearer token (``authorization: Bearer <token>`` metadata on every call). gRPC
statuses are translated back to domain errors here and nowhere else.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Self, TypeVar, final

import anyio
import structlog
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from pgcm_common.hostport import HostPort, parse_host_port
from pgcm_common.proto.failover import (
    Empty,
    FailoverStub,
    HealthCheckResponseStatus,
    MaintenanceRequest,
    MigrateRequest,
    PauseRequest,
)
from pgcm_failover.errors import (
    SuperviseError,
    SuperviseRefused,
    SuperviseTooOld,
    SuperviseUnauthorized,
    SuperviseUnavailable,
)
from pgcm_failover.pipeline import Health, MigrationTarget

__all__ = [
    "ClientTls",
    "SuperviseEndpoint",
    "make_ssl_context",
    "parse_endpoint",
    "pause_request",
]

log = structlog.get_logger("pgcm_failover.client")

T = TypeVar("T")

_UNAVAILABLE = frozenset({Status.UNAVAILABLE, Status.CANCELLED, Status.UNKNOWN})
_UNAUTHORIZED = frozenset({Status.UNAUTHENTICATED, Status.PERMISSION_DENIED})
_MS_PER_S = 1000


@final
@dataclass(frozen=True, slots=True)
class ClientTls:
    """TLS material for talking to supervise (paths; read once by :func:`make_ssl_context`)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


def make_ssl_context(tls: ClientTls) -> ssl.SSLContext:
    """Build the client TLS context: verify the server with the CA, offer ALPN ``h2``.

    Blocking (reads files): call it before the event loop or in a worker thread.

    Raises:
        OSError: a file cannot be read.
        ssl.SSLError: a file is not valid PEM or the key does not match the certificate.
    """
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=None if tls.ca_file is None else str(tls.ca_file)
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    if tls.cert_file is not None:
        context.load_cert_chain(
            str(tls.cert_file), None if tls.key_file is None else str(tls.key_file)
        )
    return context


def parse_endpoint(text: str) -> HostPort:
    """Parse one supervise endpoint, ``host:port`` (``[v6]:port`` for IPv6).

    Raises:
        ValueError: the message names the endpoint and what is wrong with it.
    """
    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise ValueError(f"supervise endpoint: {exc}") from None


def pause_request(*, pause_timeout: timedelta, expiry: timedelta) -> PauseRequest:
    """Build a PauseRequest understood by old and new servers alike.

    The original's fields carry whole seconds, rounded UP so an old server never gives
    PAUSE less time than asked, nor resumes sooner; the pgcm fields carry milliseconds,
    which new servers prefer.
    """

    def seconds(value: timedelta) -> int:
        return max(1, math.ceil(value.total_seconds()))

    def millis(value: timedelta) -> int:
        return max(1, math.ceil(value.total_seconds() * _MS_PER_S))

    return PauseRequest(
        timeout=seconds(pause_timeout),
        expiry=seconds(expiry),
        timeout_ms=millis(pause_timeout),
        expiry_ms=millis(expiry),
    )


@final
class SuperviseEndpoint:
    """One pgcm-supervise failover API; implements ``pipeline.SuperviseClient``.

    Close it (``with`` or :meth:`close`) to drop the HTTP/2 connection.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
        channel: Channel | None = None,
    ) -> None:
        """Describe one endpoint; nothing connects until the first call.

        Args:
            endpoint: ``host:port``.
            ssl_context: TLS context (from :func:`make_ssl_context`); None for plain HTTP/2.
            token: bearer token sent as ``authorization`` metadata.
            channel: an already open channel (tests use ``grpclib.testing.ChannelFor``).

        Raises:
            ValueError: ``endpoint`` is not ``host:port``.
        """
        self._endpoint = endpoint
        if channel is None:
            host, port = parse_endpoint(endpoint)
            channel = Channel(host, port, ssl=ssl_context)
            if token is not None and ssl_context is None:
                log.warning(
                    "supervise.token.cleartext",
                    endpoint=endpoint,
                    msg="sending the bearer token without TLS: anyone on the network path "
                    "can read it; set tls_ca_file to use TLS",
                )
        self._channel = channel
        metadata: Mapping[str, str] = {} if token is None else {"authorization": f"Bearer {token}"}
        self._stub = FailoverStub(channel, metadata=metadata)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._channel.close()

    @property
    def endpoint(self) -> str:
        """Return ``host:port`` as configured."""
        return self._endpoint

    async def health_check(self) -> Health:
        """Ask whether the endpoint is HEALTHY, with the server's reasons when not.

        Raises:
            SuperviseError: the call failed (see the module docstring).
        """
        response = await self._call(
            "health_check", lambda: self._stub.health_check(Empty(), timeout=_remaining())
        )
        healthy = response.status is HealthCheckResponseStatus.HEALTHY
        reasons = tuple(response.reasons)
        if not healthy and not reasons:
            reasons = (f"status {response.status.name}",)
        return Health(healthy=healthy, reasons=reasons)

    async def pause(self, *, pause_timeout: timedelta, expiry: timedelta) -> None:
        """PAUSE the endpoint's PgBouncer; the server resumes it by itself after ``expiry``.

        Raises:
            TimeoutError: the server could not PAUSE within ``pause_timeout`` (it has
                undone its own pause).
            SuperviseError: any other failure.
        """
        request = pause_request(pause_timeout=pause_timeout, expiry=expiry)
        log.info(
            "clients.pgbouncer.pause",
            endpoint=self._endpoint,
            timeout_ms=request.timeout_ms,
            expiry_ms=request.expiry_ms,
        )
        await self._call("pause", lambda: self._stub.pause(request, timeout=_remaining()))

    async def resume(self) -> None:
        """RESUME the endpoint's PgBouncer (success when it was not paused).

        Raises:
            SuperviseError: the call failed.
        """
        log.info("clients.pgbouncer.resume", endpoint=self._endpoint)
        await self._call("resume", lambda: self._stub.resume(Empty(), timeout=_remaining()))

    async def migrate(self, target_node: str | None) -> MigrationTarget:
        """Ask Pacemaker (through this endpoint) to move the primary.

        ``None`` lets the cluster choose and uses the original's ``migrate``; a named
        node needs the pgcm extension ``migrate_to``.

        Raises:
            SuperviseTooOld: a target was named and the server lacks ``migrate_to``.
            SuperviseError: the call failed, or the answer names no node/address.
        """
        log.info("clients.pacemaker.migrate", endpoint=self._endpoint, target=target_node)
        if target_node is None:
            response = await self._call(
                "migrate", lambda: self._stub.migrate(Empty(), timeout=_remaining())
            )
        else:
            request = MigrateRequest(target=target_node)
            try:
                response = await self._call(
                    "migrate_to", lambda: self._stub.migrate_to(request, timeout=_remaining())
                )
            except SuperviseTooOld as exc:
                raise SuperviseTooOld(
                    self._endpoint,
                    "migrate_to",
                    exc.status,
                    "server is too old for --target (no migrate_to rpc); upgrade "
                    "pgcm-supervise or run without --target",
                ) from exc
        if not response.migrating_to or not response.address:
            raise SuperviseRefused(
                self._endpoint,
                "migrate",
                None,
                f"answer names no target (node={response.migrating_to!r}, "
                f"address={response.address!r})",
            )
        return MigrationTarget(response.migrating_to, response.address)

    async def unmigrate(self) -> None:
        """Clear the move constraint (success when there is none).

        Raises:
            SuperviseError: the call failed.
        """
        log.info("clients.pacemaker.unmigrate", endpoint=self._endpoint)
        await self._call("unmigrate", lambda: self._stub.unmigrate(Empty(), timeout=_remaining()))

    async def set_maintenance(self, *, enabled: bool, reason: str, by: str) -> None:
        """Put Pacemaker into (``enabled``) or out of maintenance mode.

        Raises:
            SuperviseTooOld: the server lacks the ``set_maintenance`` rpc.
            SuperviseError: the call failed.
        """
        log.info("clients.pacemaker.maintenance", endpoint=self._endpoint, enabled=enabled)
        request = MaintenanceRequest(enabled=enabled, reason=reason, requested_by=by)
        try:
            await self._call(
                "set_maintenance",
                lambda: self._stub.set_maintenance(request, timeout=_remaining()),
            )
        except SuperviseTooOld as exc:
            raise SuperviseTooOld(
                self._endpoint,
                "set_maintenance",
                exc.status,
                "server is too old for maintenance mode (no set_maintenance rpc); upgrade "
                "pgcm-supervise",
            ) from exc

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        # When a connection fails, grpclib cancels the task awaiting the call
        # (grpclib.utils.Wrapper: task.cancel(), never uncancelled) and may raise
        # StreamTerminatedError or a bare CancelledError that no cancel scope asked
        # for. On the caller's task that request would stay pending and make the next
        # anyio cancel scope there re-raise instead of catching its own cancellation,
        # so the call runs in a child task that takes the stray cancellation with it.
        # A cancellation of an enclosing scope still propagates: the task group
        # re-raises it on exit.
        results: list[T] = []
        failures: list[Exception] = []

        async def attempt() -> None:
            try:
                results.append(await self._call_once(operation, call))
            except Exception as exc:  # noqa: BLE001 - re-raised in the caller's task below
                failures.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(attempt)
        if failures:
            raise failures[0]
        if results:
            return results[0]
        # The child ended cancelled although no enclosing scope was cancelled (that
        # would have been re-raised above): grpclib gave up on the connection.
        raise SuperviseUnavailable(
            self._endpoint, operation, None, "call cancelled by grpclib (connection lost)"
        )

    async def _call_once(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except GRPCError as exc:
            raise _translate(self._endpoint, operation, exc) from exc
        except (OSError, StreamTerminatedError, ProtocolError) as exc:
            raise SuperviseUnavailable(
                self._endpoint, operation, None, str(exc) or type(exc).__name__
            ) from exc


def _remaining() -> float | None:
    """Seconds left before the caller's anyio deadline, sent as the call's gRPC timeout.

    The server then knows the deadline too (grpclib's ``stream.deadline``): supervise's
    health check bounds its probes by it and answers UNHEALTHY with its reasons in time
    instead of missing the deadline. None (no timeout) outside any deadline.
    """
    deadline = anyio.current_effective_deadline()
    if math.isinf(deadline):
        return None
    return max(deadline - anyio.current_time(), 0.001)


def _translate(endpoint: str, operation: str, exc: GRPCError) -> Exception:
    status = exc.status
    detail = exc.message or status.name
    if status is Status.DEADLINE_EXCEEDED:
        return TimeoutError(f"{operation} on {endpoint}: {detail}")
    cls: type[SuperviseError]
    if status in _UNAVAILABLE:
        cls = SuperviseUnavailable
    elif status in _UNAUTHORIZED:
        cls = SuperviseUnauthorized
    elif status is Status.UNIMPLEMENTED:
        cls = SuperviseTooOld
    else:
        cls = SuperviseRefused
    return cls(endpoint, operation, status.name, detail)
