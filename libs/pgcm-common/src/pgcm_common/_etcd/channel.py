"""One connection to one etcd endpoint: aetcd's client on a channel we build.

aetcd 1.0 opens ``grpc.aio.insecure_channel`` in ``Client.connect`` and nowhere else, so
:class:`ChannelClient` overrides ``connect`` to open a secure channel when TLS is
configured, pass our keepalive options and wait (bounded) for the connection before
the first request. Everything else (request building, auth token metadata, stubs) stays
aetcd's. See docs/adr/0001-etcd-client.md.
"""

from __future__ import annotations

from typing import final

import aetcd
import aetcd.rpc
import anyio
import grpc
import grpc.aio

from pgcm_common._etcd.settings import EtcdEndpoint, EtcdSettings
from pgcm_common.errors import EtcdError

__all__ = ["CLOSE_GRACE_S", "ChannelClient", "close_client", "read_credentials"]

# Closing a channel waits for grpc.aio to end its calls; a frozen peer must not hold
# up failover (or shutdown) for longer than this.
CLOSE_GRACE_S = 1.0


@final
class ChannelClient(aetcd.Client):  # type: ignore[misc]  # aetcd ships no type hints
    """aetcd's client for one endpoint, with our channel: TLS, keepalive, bounded dial."""

    def __init__(
        self,
        endpoint: EtcdEndpoint,
        settings: EtcdSettings,
        credentials: grpc.ChannelCredentials | None,
        *,
        index: int,
    ) -> None:
        password = settings.password.get_secret_value() if settings.password else None
        super().__init__(
            host=endpoint.host,
            port=endpoint.port,
            username=settings.username,
            password=password,
            timeout=settings.request_timeout.total_seconds(),
            options=dict(settings.grpc_options()),
        )
        self.endpoint = endpoint
        self.index = index  # position in EtcdSettings.endpoints
        self._credentials = credentials
        self._dial_timeout_s = settings.dial_timeout.total_seconds()

    async def connect(self) -> None:
        """Open the channel, wait until it is connected, and authenticate if configured.

        Raises:
            TimeoutError: the endpoint did not accept a connection within dial_timeout.
            grpc.aio.AioRpcError: authentication failed.
        """
        if self._connected.is_set():
            return
        options = list(self._options.items())
        target = self.endpoint.target
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(target, options=options)
        else:
            channel = grpc.aio.secure_channel(target, self._credentials, options=options)
        try:
            with anyio.fail_after(self._dial_timeout_s):
                await channel.channel_ready()
            metadata = None
            if self._username is not None and self._password is not None:
                response = await aetcd.rpc.AuthStub(channel).Authenticate(
                    aetcd.rpc.AuthenticateRequest(name=self._username, password=self._password),
                    timeout=self._timeout,
                )
                metadata = (("token", response.token),)
        except BaseException:
            with anyio.move_on_after(CLOSE_GRACE_S, shield=True):
                await channel.close()
            raise
        self.channel = channel
        self.metadata = metadata
        self.kvstub = aetcd.rpc.KVStub(channel)
        self.clusterstub = aetcd.rpc.ClusterStub(channel)
        self.leasestub = aetcd.rpc.LeaseStub(channel)
        self.maintenancestub = aetcd.rpc.MaintenanceStub(channel)
        self.watchstub = aetcd.rpc.WatchStub(channel)
        # aetcd's watcher (unowned asyncio tasks) is never started: close() skips it.
        self._watcher = None
        self._connected.set()


async def close_client(client: ChannelClient) -> None:
    """Close a connection, shielded and bounded (calls still on it end as cancelled)."""
    with anyio.move_on_after(CLOSE_GRACE_S, shield=True):
        await client.close()


async def read_credentials(settings: EtcdSettings) -> grpc.ChannelCredentials | None:
    """Return the TLS channel credentials ``settings`` ask for, or None for plain text.

    Raises:
        EtcdError: a TLS file cannot be read.
    """
    if not settings.use_tls:
        return None

    async def read(path: object) -> bytes | None:
        return None if path is None else await anyio.Path(str(path)).read_bytes()

    try:
        root = await read(settings.ca_file)
        key = await read(settings.key_file)
        chain = await read(settings.cert_file)
    except OSError as exc:
        raise EtcdError(f"cannot read etcd TLS files: {exc}") from exc
    creds: grpc.ChannelCredentials = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=chain
    )
    return creds
