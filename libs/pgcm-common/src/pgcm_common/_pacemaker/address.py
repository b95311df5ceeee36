"""Find the network address of a cluster node: ask Corosync, or look it up in settings.

Without a floating IP the primary's *address* is what clients need; Pacemaker only names
nodes. Corosync knows each node's ring address (``corosync-cfgtool -a <nodeid>``), and
deployments whose client network differs from the ring give a static map instead.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import timedelta
from types import MappingProxyType
from typing import Protocol, final

import anyio

from pgcm_common._pacemaker.errors import NodeAddressUnknown, PacemakerCommandFailed
from pgcm_common._pacemaker.model import Node
from pgcm_common._pacemaker.reader import run_command

__all__ = [
    "CorosyncNodeAddresses",
    "NodeAddressResolver",
    "StaticNodeAddresses",
    "parse_cfgtool_addresses",
]


class NodeAddressResolver(Protocol):
    """Maps a cluster node to the address clients should connect to."""

    async def address_of(self, node: Node) -> str:
        """Return the address of ``node``.

        Raises:
            NodeAddressUnknown: no address is known for it.
        """
        ...


@final
class StaticNodeAddresses:
    """A fixed ``node name -> address`` map, from settings."""

    def __init__(self, addresses: Mapping[str, str]) -> None:
        self._addresses = MappingProxyType(dict(addresses))

    async def address_of(self, node: Node) -> str:
        """Return the configured address of ``node``.

        Raises:
            NodeAddressUnknown: the map has no entry for the node.
        """
        address = self._addresses.get(node.name)
        if not address:
            known = ", ".join(sorted(self._addresses)) or "none"
            raise NodeAddressUnknown(node.name, f"not in the static address map (known: {known})")
        return address


@final
class CorosyncNodeAddresses:
    """Ask Corosync for a node's first ring address with ``corosync-cfgtool -a <nodeid>``."""

    def __init__(
        self,
        *,
        command_prefix: tuple[str, ...] = (),
        executable: str = "corosync-cfgtool",
        timeout: timedelta = timedelta(seconds=2),
        kill_grace: timedelta = timedelta(seconds=5),
    ) -> None:
        self._prefix = command_prefix
        self._executable = executable
        self._timeout = timeout
        self._kill_grace = kill_grace

    async def address_of(self, node: Node) -> str:
        """Return the first address Corosync has for ``node``.

        Raises:
            NodeAddressUnknown: the node id is not a Corosync id, corosync-cfgtool failed,
                or it printed no valid address.

        Cancellation:
            The caller bounds the call; corosync-cfgtool is killed on cancellation.
        """
        if not node.id.isdigit():
            raise NodeAddressUnknown(node.name, f"node id {node.id!r} is not a Corosync node id")
        argv = (*self._prefix, self._executable, "-a", node.id)
        try:
            with anyio.fail_after(self._timeout.total_seconds()):
                output = await run_command(argv, kill_grace=self._kill_grace)
        except PacemakerCommandFailed as exc:
            raise NodeAddressUnknown(node.name, str(exc)) from exc
        except TimeoutError as exc:
            seconds = self._timeout.total_seconds()
            raise NodeAddressUnknown(
                node.name, f"{argv[-3]} did not answer in {seconds:g}s"
            ) from exc
        if output.returncode != 0:
            stderr = output.stderr_text.strip() or "no output"
            raise NodeAddressUnknown(
                node.name, f"{' '.join(argv)} exited {output.returncode}: {stderr}"
            )
        text = output.stdout.decode("utf-8", "replace")
        return parse_cfgtool_addresses(text, node=node.name)[0]


def parse_cfgtool_addresses(text: str, *, node: str) -> tuple[str, ...]:
    """Parse ``corosync-cfgtool -a`` output: the node's addresses, space separated.

    Raises:
        NodeAddressUnknown: there is no address, or a word is not an IP address.
    """
    words = text.split()
    if not words:
        raise NodeAddressUnknown(node, "corosync-cfgtool printed no address")
    addresses: list[str] = []
    for word in words:
        try:
            addresses.append(str(ipaddress.ip_address(word)))
        except ValueError as exc:
            raise NodeAddressUnknown(
                node, f"corosync-cfgtool printed {word!r}, not an IP address"
            ) from exc
    return tuple(addresses)
