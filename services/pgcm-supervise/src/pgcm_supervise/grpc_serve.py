"""Serve the failover API with grpclib: bind, authenticate, log, count, close gracefully.

A ``RecvRequest`` listener wraps each request's handler (the original's
``LoggingInterceptor``): it refuses oversized metadata and checks credentials
(RESOURCE_EXHAUSTED, UNAUTHENTICATED before any handler runs),
binds ``trace``, ``method`` and ``caller`` through structlog contextvars so every log
line of the request carries them, logs ``grpc.request.start`` and
``grpc.request.finish`` with the status and ``duration``, and counts RPCs by method
and status. Requests are decoded by :class:`~pgcm_supervise.limits.BoundedCodec` (size,
shape and string bounds, see ``limits.py``), and HTTP/2 flow control lets a caller
push at most 64 KiB per connection that no handler has read.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, final

import anyio
import structlog
from anyio.abc import TaskStatus
from grpclib import GRPCError
from grpclib._typing import IServable
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.events import RecvRequest, listen
from grpclib.server import Server, Stream

from pgcm_common.metrics import Discarded
from pgcm_supervise.limits import MAX_METADATA_BYTES, BoundedCodec, metadata_size
from pgcm_supervise.security import (
    Authenticator,
    SecurityOptions,
    check_exposure,
    server_ssl_context,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["MUTATING_METHODS", "GrpcServerOptions", "RpcMetrics", "serve_grpc"]

_log = structlog.get_logger("pgcm_supervise.grpc")

MUTATING_METHODS = frozenset({"pause", "resume", "migrate", "migrate_to", "unmigrate"})
_TRACE_HEADER = "x-trace-id"
_MAX_TRACE_LEN = 64
# HTTP/2's smallest flow-control windows: requests are tiny, and a caller cannot make
# us buffer more than this of a message before its handler has read (and refused) it.
_WINDOW_BYTES = 65_536


@final
@dataclass(frozen=True, slots=True)
class GrpcServerOptions:
    """Where and how to serve.

    Attributes:
        host: address to bind (an IP or ``localhost``).
        port: TCP port; 0 picks a free one (reported through ``task_status``).
        security: TLS, mTLS and token settings.
        registry: where the RPC counters go (None: a private registry).
        shutdown_grace: how long running requests get to finish on shutdown.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    security: SecurityOptions = field(default_factory=SecurityOptions)
    registry: CollectorRegistry | None = field(default=None, compare=False)
    shutdown_grace: timedelta = timedelta(seconds=5)


@final
class RpcMetrics:
    """``pgcm_supervise_rpc_requests_total{method,status}``, durations, the last failure."""

    requests: Counter | Discarded
    duration: Histogram | Discarded
    last_failure: Gauge | Discarded

    def __init__(self, registry: CollectorRegistry | None) -> None:
        """Register the metrics in ``registry`` (None: not exported, so discarded)."""
        if registry is None:
            self.requests = self.duration = self.last_failure = Discarded()
            return
        # Imported here so a supervise without metrics_address never loads it.
        from prometheus_client import Counter, Gauge, Histogram  # noqa: PLC0415

        self.requests = Counter(
            "pgcm_supervise_rpc_requests",
            "Failover API calls by method and gRPC status.",
            ["method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "pgcm_supervise_rpc_duration_seconds",
            "Duration of failover API calls by method.",
            ["method"],
            registry=registry,
        )
        # A timestamp, not only the counter: an alert on increase() misses a method's
        # first failure (the series starts at 1), which is the one that matters here.
        self.last_failure = Gauge(
            "pgcm_supervise_rpc_last_failure_timestamp_seconds",
            "Unix time of the last failover API call by method that did not end OK; "
            "absent for a method that never failed.",
            ["method"],
            registry=registry,
        )


def _trace_id(event: RecvRequest) -> str:
    # A caller-supplied trace id (pgcm-failover sends one) ties both sides' logs together.
    given = event.metadata.get(_TRACE_HEADER)
    if isinstance(given, str) and 0 < len(given) <= _MAX_TRACE_LEN and given.isprintable():
        return given
    return secrets.token_hex(8)


@final
class _RequestHooks:
    def __init__(self, authenticator: Authenticator, metrics: RpcMetrics) -> None:
        self._auth = authenticator
        self._metrics = metrics

    async def on_recv_request(self, event: RecvRequest) -> None:
        method = event.method_name.rsplit("/", 1)[-1]
        trace = _trace_id(event)
        peer = event.peer.addr()
        denied: GRPCError | None = None
        try:
            _check_metadata(event)
            caller = self._auth.identify(event.metadata, event.peer)
        except GRPCError as exc:
            denied, caller = exc, "unauthenticated"
        handler = event.method_func
        metrics = self._metrics

        async def guarded(stream: Stream[object, object]) -> None:
            if denied is not None:
                raise denied
            await handler(stream)

        async def wrapped(stream: Stream[object, object]) -> None:
            with structlog.contextvars.bound_contextvars(trace=trace, method=method, caller=caller):
                log = _log.info if method in MUTATING_METHODS else _log.debug
                log("grpc.request.start", peer=None if peer is None else f"{peer[0]}:{peer[1]}")
                started = time.monotonic()
                status = Status.OK
                try:
                    await guarded(stream)
                except GRPCError as exc:
                    status = exc.status
                    raise
                except anyio.get_cancelled_exc_class():
                    status = Status.CANCELLED
                    raise
                except Exception:
                    status = Status.UNKNOWN
                    raise
                finally:
                    elapsed = time.monotonic() - started
                    metrics.requests.labels(method, status.name).inc()
                    metrics.duration.labels(method).observe(elapsed)
                    if status is not Status.OK:
                        metrics.last_failure.labels(method).set(time.time())
                    finish = _log.info if status is Status.OK else _log.warning
                    finish("grpc.request.finish", status=status.name, duration=elapsed)

        event.method_func = wrapped


def _check_metadata(event: RecvRequest) -> None:
    size = metadata_size(event.metadata)
    if size > MAX_METADATA_BYTES:
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"request metadata of {size} bytes exceeds the {MAX_METADATA_BYTES} byte limit",
        )


async def _bind(host: str, port: int) -> socket.socket:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.setblocking(False)  # noqa: FBT003 - the socket API takes a positional flag
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_grpc(
    handlers: Collection[IServable],
    options: GrpcServerOptions,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handlers`` until cancelled; ``task_status.started(port)`` once bound.

    Raises:
        ConfigError: exposed without TLS or token (``insecure``), or unreadable TLS files.
        OSError: the address cannot be bound.

    Cancellation:
        Stops accepting, cancels running requests (a pause in flight undoes itself) and
        waits for them, shielded, at most ``shutdown_grace``.
    """
    check_exposure(options.host, options.security)
    context = await anyio.to_thread.run_sync(server_ssl_context, options.security)
    server = Server(
        list(handlers),
        codec=BoundedCodec(),
        config=Configuration(
            http2_connection_window_size=_WINDOW_BYTES, http2_stream_window_size=_WINDOW_BYTES
        ),
    )
    hooks = _RequestHooks(Authenticator(options.security), RpcMetrics(options.registry))
    listen(server, RecvRequest, hooks.on_recv_request)
    sock = await _bind(options.host, options.port)
    try:
        await server.start(sock=sock, ssl=context)
    except BaseException:
        sock.close()
        raise
    port = int(sock.getsockname()[1])
    _log.info(
        "grpc.listen",
        host=options.host,
        port=port,
        tls=context is not None,
        client_certs=options.security.tls_client_ca_file is not None,
        tokens=sorted(options.security.tokens),
    )
    try:
        task_status.started(port)
        await anyio.sleep_forever()
    finally:
        server.close()
        with anyio.move_on_after(options.shutdown_grace.total_seconds(), shield=True):
            await server.wait_closed()
        _log.info("grpc.closed", port=port)
