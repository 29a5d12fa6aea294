"""The cluster's records as plain data, shared by the kvstore side (cilia.cluster.nodes,
cilia.cluster.ipcache) and the datapath side (the agent's datapath adapter)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RoutingMode(StrEnum):
    """How pod traffic crosses nodes (Cilium's --routing-mode)."""

    NATIVE = "native"  # pod CIDRs routed over the underlay, per-node routes
    TUNNEL = "tunnel"  # VXLAN (collect-metadata), the source identity in the VNI


@dataclass(frozen=True)
class NodeRecord:
    """A node as registered in the kvstore (`cilia/nodes/<name>`, under the node's lease)."""

    name: str
    ipv4: ipaddress.IPv4Address | None
    ipv6: ipaddress.IPv6Address | None
    pod_cidrs: tuple[Network, ...]
    routing_mode: RoutingMode
    health: str = "ok"  # ok | degraded (reason in health_reason)
    health_reason: str = ""
    updated: float = 0.0  # unix time of the last write by the node


@dataclass(frozen=True)
class IpcacheRecord:
    """One endpoint IP as published in the kvstore (`cilia/ipcache/<ip>`, under its node's lease)."""

    ip: IPAddress
    identity: int
    node: str
    node_ipv4: ipaddress.IPv4Address | None  # where the tunnel goes (VXLAN underlay is IPv4)
    node_ipv6: ipaddress.IPv6Address | None = None
    namespace: str = ""
    pod: str = ""


@dataclass(frozen=True)
class RemoteEndpoint:
    """What this node's ipcache map holds for a remote endpoint IP."""

    identity: int
    tunnel_endpoint: ipaddress.IPv4Address | None  # the owning node's underlay IPv4 (tunnel mode)


@dataclass(frozen=True)
class ClusterView:
    """Everything the datapath needs from the cluster, for `DatapathAdapter.sync_cluster`: the
    other nodes (routes in native mode; their addresses are `remote-node` in the ipcache) and the
    remote endpoints' IPs (identity, tunnel endpoint)."""

    routing_mode: RoutingMode
    local_node: str
    nodes: tuple[NodeRecord, ...] = ()
    remote_endpoints: dict[Network, RemoteEndpoint] = field(default_factory=dict)
