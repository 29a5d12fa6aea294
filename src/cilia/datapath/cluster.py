"""The cluster's share of the node's datapath state, computed as plain data from a ClusterView:
the ipcache entries for remote endpoints and the other nodes, the native routes to the other
nodes' pod CIDRs, and the diff against the live ipcache that touches only the entries the cluster
sync wrote (FLAG_CLUSTER): a local pod's, the host's, world's and CIDR identities' entries are
never overwritten nor removed. No kernel access here (the agent's datapath adapter applies it)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cilia.cluster.model import ClusterView, RoutingMode
from cilia.identity.reserved import ReservedIdentity
from cilia.maps.ipcache import FLAG_CLUSTER, IpcacheValue
from cilia.netlink.routes import PodCidrRoute

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def desired_ipcache(view: ClusterView) -> dict[Network, IpcacheValue]:
    """Every other node's underlay addresses are `remote-node`; every remote endpoint IP has its
    identity and, in tunnel mode, its node's underlay IPv4 as tunnel endpoint. In tunnel mode the
    other nodes' pod CIDRs are also entries (world, with the node as tunnel endpoint), so a pod IP
    the cluster has not published yet still goes through the tunnel to the node that owns it."""
    tunnel = view.routing_mode is RoutingMode.TUNNEL
    desired: dict[Network, IpcacheValue] = {}
    remote_nodes = [node for node in view.nodes if node.name != view.local_node]
    if tunnel:
        for node in remote_nodes:
            if node.ipv4 is None:
                continue  # the tunnel's underlay is IPv4
            for cidr in node.pod_cidrs:
                desired[cidr] = IpcacheValue.remote(int(ReservedIdentity.WORLD), node.ipv4)
    for prefix, endpoint in view.remote_endpoints.items():
        desired[prefix] = IpcacheValue.remote(endpoint.identity, endpoint.tunnel_endpoint if tunnel else None)
    # (RemoteEndpoints builds each network as it is iterated: only this dict holds them, for the sync)
    for node in remote_nodes:
        for address in (node.ipv4, node.ipv6):
            if address is not None:
                desired[ipaddress.ip_network(address)] = IpcacheValue.remote(int(ReservedIdentity.REMOTE_NODE), None)
    return desired


def desired_routes(view: ClusterView) -> dict[Network, PodCidrRoute]:
    """Native routing: each other node's pod CIDRs via its underlay address of the same family.
    Tunnel routing: each into the tunnel to the node's underlay IPv4 with VNI remote-node, for what
    the node's own stack sends there (pods' traffic is encapsulated by their program, with the
    ipcache's tunnel endpoints)."""
    tunnel = view.routing_mode is RoutingMode.TUNNEL
    routes: dict[Network, PodCidrRoute] = {}
    local = next((node for node in view.nodes if node.name == view.local_node), None)
    for node in view.nodes:
        if node.name == view.local_node:
            continue
        for cidr in node.pod_cidrs:
            if tunnel:
                if node.ipv4 is not None:
                    source = None if local is None else (local.ipv4 if cidr.version == 4 else local.ipv6)
                    routes[cidr] = PodCidrRoute(tunnel_endpoint=node.ipv4, vni=int(ReservedIdentity.REMOTE_NODE),
                                                source=source)
                continue
            via = node.ipv4 if cidr.version == 4 else node.ipv6
            if via is not None:
                routes[cidr] = PodCidrRoute(via=via)
    return routes


@dataclass(frozen=True)
class IpcacheDiff:
    put: dict[Network, IpcacheValue]
    delete: tuple[Network, ...]
    kept_foreign: tuple[Network, ...]  # desired, but the prefix holds an entry the sync did not write

    @property
    def empty(self) -> bool:
        return not self.put and not self.delete


def ipcache_diff(current: dict[Network, IpcacheValue], desired: dict[Network, IpcacheValue]) -> IpcacheDiff:
    """What to write so the cluster's entries become `desired`, leaving every other entry alone."""
    put: dict[Network, IpcacheValue] = {}
    foreign: list[Network] = []
    for prefix, value in desired.items():
        existing = current.get(prefix)
        if existing is not None and not existing.flags & FLAG_CLUSTER:
            foreign.append(prefix)
        elif existing != value:
            put[prefix] = value
    stale = tuple(prefix for prefix, value in current.items() if value.flags & FLAG_CLUSTER and prefix not in desired)
    return IpcacheDiff(put, stale, tuple(foreign))
