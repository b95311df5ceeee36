"""The connection to one etcd endpoint over etcd's gRPC API (grpclib, HTTP/2).

:class:`GrpcClient` offers what :class:`gateway.GatewayClient` offers (the
:class:`transport.EndpointClient` seam): a request named by its JSON gateway path with
a message in etcd's proto3 JSON shape goes out as the protobuf message of the matching
RPC, and the answer comes back in the gateway's JSON shape, so :mod:`codec` and every
request path above serve both transports. It exists for client certificates whose
subject has a CommonName, which etcd's gateway refuses (docs/adr/0006); importing it
loads grpclib, h2 and betterproto2, so only ``open_etcd`` does, and only when that
transport is selected.

One HTTP/2 connection carries every call and stream of the endpoint. :meth:`close`
closes it, which ends the calls and streams still waiting on it: they see
:class:`ConnectionClosedUnderCall`, as on the gateway. With a user configured,
:meth:`connect` authenticates and every request carries the token in the ``token``
metadata key (etcd's gRPC server reads it there). Without one, etcd with authentication
on takes the client certificate's CommonName as the user.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, final

import anyio
import betterproto2
from grpclib.client import Channel, Stream
from grpclib.const import Cardinality
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from pgcm_common._etcd.codec import JsonObject
from pgcm_common._etcd.failures import ConnectionClosedUnderCall, GatewayError, TransportError
from pgcm_common._etcd.gateway import token_of
from pgcm_common._etcd.settings import EtcdEndpoint, EtcdSettings
from pgcm_common._etcd.transport import authenticate_request
from pgcm_common.proto import etcdserverpb as pb

__all__ = ["GrpcClient"]


@final
@dataclass(frozen=True, slots=True)
class _Rpc:
    """One RPC of etcd's API: its gRPC path and its message types."""

    name: str
    request: type[betterproto2.Message]
    reply: type[betterproto2.Message]


# The gateway's paths (what the request paths name) and the RPCs they stand for.
_UNARY: Mapping[str, _Rpc] = {
    "/v3/kv/range": _Rpc("/etcdserverpb.KV/Range", pb.RangeRequest, pb.RangeResponse),
    "/v3/kv/put": _Rpc("/etcdserverpb.KV/Put", pb.PutRequest, pb.PutResponse),
    "/v3/kv/deleterange": _Rpc(
        "/etcdserverpb.KV/DeleteRange", pb.DeleteRangeRequest, pb.DeleteRangeResponse
    ),
    "/v3/kv/txn": _Rpc("/etcdserverpb.KV/Txn", pb.TxnRequest, pb.TxnResponse),
    "/v3/kv/compaction": _Rpc(
        "/etcdserverpb.KV/Compact", pb.CompactionRequest, pb.CompactionResponse
    ),
    "/v3/lease/grant": _Rpc(
        "/etcdserverpb.Lease/LeaseGrant", pb.LeaseGrantRequest, pb.LeaseGrantResponse
    ),
    "/v3/lease/revoke": _Rpc(
        "/etcdserverpb.Lease/LeaseRevoke", pb.LeaseRevokeRequest, pb.LeaseRevokeResponse
    ),
    "/v3/auth/authenticate": _Rpc(
        "/etcdserverpb.Auth/Authenticate", pb.AuthenticateRequest, pb.AuthenticateResponse
    ),
}
# A keepalive is a bidirectional stream; the gateway answers one request with one
# ``{"result": ...}``, and so does this client.
_KEEPALIVE_PATH = "/v3/lease/keepalive"
_KEEPALIVE = _Rpc(
    "/etcdserverpb.Lease/LeaseKeepAlive", pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse
)
_STREAMS: Mapping[str, _Rpc] = {
    "/v3/watch": _Rpc("/etcdserverpb.Watch/Watch", pb.WatchRequest, pb.WatchResponse),
}
# proto3 JSON (and betterproto2's snake casing) spells etcd's lease fields ``id`` and
# ``ttl``; the gateway keeps the .proto's names, ``ID`` and ``TTL``.
_GATEWAY_NAMES = {"id": "ID", "ttl": "TTL"}


@final
class _Codec(CodecBase):
    """Protobuf on the wire through betterproto2 (grpclib's own codec needs protobuf)."""

    @property
    def __content_subtype__(self) -> str:
        return "proto"

    # grpclib's CodecBase signatures (Any) are kept: the messages are betterproto2's.
    def encode(self, message: Any, message_type: Any) -> bytes:  # noqa: ANN401, ARG002
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:  # noqa: ANN401
        return message_type.parse(data)


class _LeaveStream(Exception):
    """Raised through grpclib's stream on leaving: it resets the stream, without waiting."""


@final
class GrpcClient:
    """The HTTP/2 connection to one endpoint, carrying every call and stream."""

    def __init__(
        self,
        endpoint: EtcdEndpoint,
        settings: EtcdSettings,
        tls: ssl.SSLContext | None,
        *,
        index: int,
    ) -> None:
        self.endpoint = endpoint
        self.index = index  # position in EtcdSettings.endpoints
        self._channel = Channel(endpoint.host, endpoint.port, ssl=tls, codec=_Codec())
        self._dial_timeout_s = settings.dial_timeout.total_seconds()
        self._timeout_s = settings.request_timeout.total_seconds()
        self._user = authenticate_request(settings)
        self._metadata: dict[str, str] = {}
        self._closed = False

    async def connect(self) -> None:
        """Open the connection and authenticate if a user is configured.

        On failure the connection is closed.

        Raises:
            TimeoutError: no connection within ``dial_timeout``, or no answer in time.
            OSError, TransportError: the connection (or its TLS handshake) failed.
            GatewayError: etcd refused the credentials.
        """
        try:
            with anyio.fail_after(self._dial_timeout_s), self._errors():
                # grpclib dials lazily; dialling here bounds it by dial_timeout.
                await self._channel.__connect__()
            if self._user is not None:
                token = token_of(await self.call("/v3/auth/authenticate", self._user))
                self._metadata = {"token": token}
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the connection, ending the calls and streams waiting on it."""
        self._closed = True
        self._channel.close()

    async def call(
        self, path: str, message: Mapping[str, Any], *, timeout_s: float | None = None
    ) -> JsonObject:
        """Send one request and return etcd's answer, within ``request_timeout``.

        Raises:
            GatewayError: etcd answered with an error.
            TimeoutError: no answer within ``timeout_s`` (default ``request_timeout``).
            OSError, TransportError: the connection failed.
            ConnectionClosedUnderCall: :meth:`close` was called meanwhile.
        """
        keepalive = path == _KEEPALIVE_PATH
        rpc = _KEEPALIVE if keepalive else _UNARY[path]
        cardinality = Cardinality.STREAM_STREAM if keepalive else Cardinality.UNARY_UNARY
        self._check_open()
        with anyio.fail_after(self._timeout_s if timeout_s is None else timeout_s):
            with self._errors():
                async with self._channel.request(
                    rpc.name, cardinality, rpc.request, rpc.reply, metadata=self._metadata
                ) as stream:
                    await stream.send_message(rpc.request.from_dict(message), end=True)
                    reply = await stream.recv_message()
            if reply is None:
                raise TransportError(f"{self.endpoint} answered {rpc.name} with no message")
        answer = _gateway_shape(reply)
        return {"result": answer} if keepalive else answer

    @asynccontextmanager
    async def stream(self, path: str, message: Mapping[str, Any]) -> AsyncIterator[Replies]:
        """Open a stream, send one request on it and yield its streamed answer.

        Entering waits for the answer's headers; the caller bounds that wait.

        Raises:
            GatewayError: etcd refused the request.
            OSError, TransportError: the connection failed.
            ConnectionClosedUnderCall: :meth:`close` was called meanwhile.

        Cancellation:
            Leaving resets the stream, which ends it on etcd's side.
        """
        rpc = _STREAMS[path]
        self._check_open()
        try:
            async with self._channel.request(
                rpc.name, Cardinality.STREAM_STREAM, rpc.request, rpc.reply, metadata=self._metadata
            ) as stream:
                with self._errors():
                    await stream.send_message(rpc.request.from_dict(message))
                    await stream.recv_initial_metadata()
                yield Replies(self, stream)
                # Leaving without an error would make grpclib wait for etcd to end the
                # stream, which a watch never does; an exception makes it reset it.
                raise _LeaveStream  # noqa: TRY301 - caught right below, on purpose
        except _LeaveStream:
            pass

    def _check_open(self) -> None:
        # grpclib would dial again after close(): a closed client must stay closed.
        if self._closed:
            raise ConnectionClosedUnderCall(f"etcd connection to {self.endpoint} closed")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Map grpclib's failures to the ones the request paths classify."""
        try:
            yield
        except GRPCError as exc:
            self._check_open()
            raise GatewayError(exc.status.value, exc.message or exc.status.name) from exc
        except (StreamTerminatedError, ProtocolError) as exc:
            self._check_open()
            raise TransportError(f"{self.endpoint}: {exc}") from exc
        except OSError:
            self._check_open()
            raise


@final
class Replies:
    """The answers of one gRPC stream (a watch), in the gateway's JSON shape."""

    def __init__(self, client: GrpcClient, stream: Stream[Any, Any]) -> None:
        self._client = client
        self._stream = stream

    async def read(self) -> JsonObject:
        """Return the next message.

        Raises:
            GatewayError: etcd ended the stream with an error.
            TransportError: the stream ended or broke.
            ConnectionClosedUnderCall: the connection was closed by this side.
        """
        with self._client._errors():  # noqa: SLF001 - one module's two halves
            reply = await self._stream.recv_message()
            if reply is None:
                # The end of the answer: its status says whether etcd ended it on error.
                await self._stream.recv_trailing_metadata()
        if reply is None:
            raise TransportError(f"stream from {self._client.endpoint} ended")
        return _gateway_shape(reply)


def _gateway_shape(reply: betterproto2.Message) -> JsonObject:
    """Return ``reply`` as etcd's gateway renders it."""
    answer = reply.to_dict(casing=betterproto2.Casing.SNAKE)
    return {_GATEWAY_NAMES.get(name, name): value for name, value in answer.items()}
