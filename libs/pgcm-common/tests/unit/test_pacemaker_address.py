from __future__ import annotations

import anyio
import pytest

from pgcm_common.pacemaker import (
    CorosyncNodeAddresses,
    Node,
    NodeAddressResolver,
    NodeAddressUnknown,
    StaticNodeAddresses,
    parse_cfgtool_addresses,
)


def node(name: str, node_id: str = "1") -> Node:
    return Node(
        name=name,
        id=node_id,
        online=True,
        standby=False,
        unclean=False,
        maintenance=False,
        is_dc=False,
    )


def test_cfgtool_output_yields_every_address_in_order() -> None:
    assert parse_cfgtool_addresses("10.250.0.11 192.168.1.5\n", node="n1") == (
        "10.250.0.11",
        "192.168.1.5",
    )
    assert parse_cfgtool_addresses("fe80::1\n", node="n1") == ("fe80::1",)


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "printed no address"), ("  \n", "printed no address"), ("n1.example", "not an IP")],
)
def test_cfgtool_output_without_an_address_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(NodeAddressUnknown, match=f"node 'n1': .*{message}"):
        parse_cfgtool_addresses(text, node="n1")


async def test_static_map_returns_the_configured_address() -> None:
    resolver: NodeAddressResolver = StaticNodeAddresses({"n1": "10.0.0.1", "n2": "db2.internal"})
    with anyio.fail_after(1):
        assert await resolver.address_of(node("n2", "2")) == "db2.internal"


async def test_static_map_names_the_unknown_node_and_the_known_ones() -> None:
    resolver = StaticNodeAddresses({"n1": "10.0.0.1"})
    with anyio.fail_after(1), pytest.raises(NodeAddressUnknown, match=r"'n9'.*known: n1"):
        await resolver.address_of(node("n9"))


async def test_corosync_resolver_rejects_a_non_numeric_node_id_without_running_anything() -> None:
    resolver = CorosyncNodeAddresses(executable="/nonexistent/corosync-cfgtool")
    with anyio.fail_after(1), pytest.raises(NodeAddressUnknown, match="not a Corosync node id"):
        await resolver.address_of(node("remote1", "remote1"))
