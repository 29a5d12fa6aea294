"""A small typed wrapper over pyroute2: endpoint veths, the node's own networking, address lookups.

The agent reaches netlink only through this package."""

from cilia.netlink.addresses import addresses
from cilia.netlink.links import (
    EndpointLink,
    EndpointLinkSpec,
    NetlinkError,
    container_link_info,
    create_endpoint_link,
    delete_endpoint_link,
    link_index,
)
from cilia.netlink.node import NodeNetConfig, setup_node_networking, teardown_node_networking

__all__ = [
    "EndpointLink", "EndpointLinkSpec", "NetlinkError", "NodeNetConfig",
    "addresses", "container_link_info", "create_endpoint_link", "delete_endpoint_link", "link_index",
    "setup_node_networking", "teardown_node_networking",
]
