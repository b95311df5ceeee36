"""The endpoint in use and its client; failover moves to the next endpoint.

:class:`EndpointPool` is what the request paths (:mod:`failover`, :mod:`hedging`,
:mod:`watch_stream`) share: they ask it for the client in use (a
:class:`EndpointClient`: the connections to one endpoint), tell it which client failed
(:meth:`EndpointPool.drop`) or which hedge answered first (:meth:`EndpointPool.adopt`),
and dial extra clients through it.
"""

from __future__ import annotations

import ssl
from typing import final

import anyio
import structlog

from pgcm_common._etcd.failures import details
from pgcm_common._etcd.settings import EtcdEndpoint, EtcdSettings
from pgcm_common._etcd.transport import ClientFactory, EndpointClient

__all__ = ["EndpointPool"]

log = structlog.get_logger()


@final
class EndpointPool:
    """The configured endpoints, which one is in use, and the connection to it."""

    def __init__(
        self, settings: EtcdSettings, tls: ssl.SSLContext | None, factory: ClientFactory
    ) -> None:
        self._settings = settings
        self._tls = tls
        self._factory = factory
        self._endpoints = settings.parsed_endpoints
        self._index = 0
        self._client: EndpointClient | None = None
        self._connecting = anyio.Lock()
        self._hedge_delay_s = settings.hedge_delay.total_seconds()

    @property
    def endpoint(self) -> EtcdEndpoint:
        """Return the endpoint in use (or tried next)."""
        return self._endpoints[self._index]

    @property
    def position(self) -> int:
        """Return the index of the endpoint in use (or tried next)."""
        return self._index

    @property
    def count(self) -> int:
        """Return how many endpoints are configured."""
        return len(self._endpoints)

    def describe(self) -> str:
        """Return every endpoint, comma-separated, for error messages."""
        return ", ".join(map(str, self._endpoints))

    def close(self) -> None:
        """Close the connections to the endpoint in use."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def connected(self) -> EndpointClient:
        """Return the connection in use, dialling the current endpoint if there is none.

        Raises:
            TimeoutError: no connection within dial_timeout (see ``EndpointClient.connect``).
        """
        async with self._connecting:
            if self._client is None:
                client = await self.dial(self._index)
                adopted = self._in_use()
                if adopted is not None:
                    # A hedged read adopted another connection while we dialled.
                    client.close()
                    return adopted
                self._client = client
            return self._client

    def _in_use(self) -> EndpointClient | None:
        # A method, not the attribute: mypy would keep the narrowing across an await.
        return self._client

    async def dial(self, index: int) -> EndpointClient:
        """Open a connection to the endpoint at ``index``; on failure move past it.

        The caller owns the connection unless it becomes the one in use.

        Raises:
            Whatever ``EndpointClient.connect`` raises.
        """
        client = self._factory(self._endpoints[index], self._settings, self._tls, index=index)
        try:
            await client.connect()
        except Exception:
            if self._index == index and self._client is None:
                self._index = (index + 1) % len(self._endpoints)
            raise
        return client

    def drop(self, client: EndpointClient, exc: BaseException) -> None:
        """Forget a failing connection and move on to the next endpoint."""
        if self._client is client:
            self._client = None
            self._index = (self._index + 1) % len(self._endpoints)
            log.warning(
                "etcd.endpoint.failover",
                endpoint=str(client.endpoint),
                next_endpoint=str(self.endpoint),
                error=details(exc),
            )
        client.close()

    def adopt(self, client: EndpointClient, replaced: EndpointClient | None) -> bool:
        """Make ``client`` (a hedge that answered first) the connection in use.

        Only when the connection in use is still ``replaced`` (or none): if another call
        moved on meanwhile, its choice stands. The replaced connection is closed, which
        also ends the calls and watch streams still waiting on its connections (they retry here).

        Returns:
            Whether ``client`` was adopted (if not, the caller still owns it).
        """
        if self._client is not replaced and self._client is not None:
            return False
        old, self._client = self._client, client
        previous = self._endpoints[self._index] if old is None else old.endpoint
        self._index = client.index
        log.warning(
            "etcd.endpoint.failover",
            endpoint=str(previous),
            next_endpoint=str(client.endpoint),
            error=f"no answer within hedge_delay ({self._hedge_delay_s:g}s)",
            msg="the next endpoint answered a hedged read first; using it from now on",
        )
        if old is not None:
            old.close()
        return True
