"""The cluster's share of the node's datapath state, computed as plain data from a ClusterView:
the ipcache entries for remote endpoints and the other nodes, the native routes to the other
nodes' pod CIDRs, and the diff against the live ipcache that touches only the entries the cluster
sync wrote (FLAG_CLUSTER): a local pod's, the host's, world's and CIDR identities' entries are
never overwritten nor removed. No kernel access here (the agent's datapath adapter applies it)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from cilia.cluster.model import ClusterView, RemoteEndpoints, RoutingMode
from cilia.identity.reserved import ReservedIdentity
from cilia.maps.ipcache import (
    FLAG_CLUSTER,
    VALUE_SIZE,
    IpcacheValue,
    pack_host_key,
    pack_key,
    unpack_key,
    value_flags,
)
from cilia.netlink.routes import PodCidrRoute

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def desired_ipcache(view: ClusterView, direct: tuple[Network, ...] = ()) -> dict[Network, IpcacheValue]:
    """Every other node's underlay addresses are `remote-node`; every remote endpoint IP has its
    identity and, in tunnel mode, its node's underlay IPv4 as tunnel endpoint. In tunnel mode the
    other nodes' pod CIDRs are also entries (world, with the node as tunnel endpoint), so a pod IP
    the cluster has not published yet still goes through the tunnel to the node that owns it.
    In native mode a remote endpoint inside one of the `direct` networks (the destinations the
    node never masquerades: the native-routing CIDRs, or everything with masquerade off) is flagged
    native: the pods' programs forward its packets to the underlay themselves (bpf/lib/fib.h).
    (Decoded from `desired_ipcache_packed`, which the agent uses.)"""
    return {unpack_key(key): IpcacheValue.unpack(value) for key, value in desired_ipcache_packed(view, direct).items()}


def desired_ipcache_packed(view: ClusterView, direct: tuple[Network, ...] = ()) -> dict[bytes, bytes]:
    """`desired_ipcache` as the map holds it: packed keys -> packed values. At 10,000 remote
    endpoints a dict of network objects and IpcacheValues costs ~0.5 KiB per entry for the time of
    a sync; this one ~0.15 KiB, and endpoints sharing an identity and node share one value."""
    tunnel = view.routing_mode is RoutingMode.TUNNEL
    desired: dict[bytes, bytes] = {}
    values: dict[tuple[int, ipaddress.IPv4Address | None, bool], bytes] = {}
    direct = () if tunnel else direct

    def value(identity: int, tunnel_endpoint: ipaddress.IPv4Address | None, native: bool = False) -> bytes:
        key = (identity, tunnel_endpoint, native)
        packed = values.get(key)
        if packed is None:
            packed = values[key] = IpcacheValue.remote(identity, tunnel_endpoint, native).pack()
        return packed

    def is_direct(address: IPAddress) -> bool:
        return any(address.version == net.version and address in net for net in direct)

    remote_nodes = [node for node in view.nodes if node.name != view.local_node]
    if tunnel:
        for node in remote_nodes:
            if node.ipv4 is None:
                continue  # the tunnel's underlay is IPv4
            for cidr in node.pod_cidrs:
                desired[pack_key(cidr)] = value(int(ReservedIdentity.WORLD), node.ipv4)
    endpoints = view.remote_endpoints
    if isinstance(endpoints, RemoteEndpoints):
        for host, endpoint in endpoints.host_items():
            desired[pack_host_key(host)] = value(endpoint.identity, endpoint.tunnel_endpoint if tunnel else None,
                                                 bool(direct) and is_direct(host))
    else:
        for prefix, endpoint in endpoints.items():
            native = bool(direct) and any(prefix.version == net.version and prefix.subnet_of(net)  # type: ignore[arg-type]
                                          for net in direct)
            desired[pack_key(prefix)] = value(endpoint.identity, endpoint.tunnel_endpoint if tunnel else None, native)
    for node in remote_nodes:
        for address in (node.ipv4, node.ipv6):
            if address is not None:
                desired[pack_host_key(address)] = value(int(ReservedIdentity.REMOTE_NODE), None)
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
    packed = packed_ipcache_diff(((pack_key(p), v.pack()) for p, v in current.items()),
                                 {pack_key(p): v.pack() for p, v in desired.items()})
    return IpcacheDiff({unpack_key(k): IpcacheValue.unpack(v) for k, v in packed.put.items()},
                       tuple(map(unpack_key, packed.delete)), tuple(map(unpack_key, packed.kept_foreign)))


@dataclass(frozen=True)
class PackedIpcacheDiff:
    put: dict[bytes, bytes]
    delete: tuple[bytes, ...]
    kept_foreign: tuple[bytes, ...]

    @property
    def empty(self) -> bool:
        return not self.put and not self.delete


def packed_ipcache_diff(current: Iterable[tuple[bytes, bytes]], desired: dict[bytes, bytes]) -> PackedIpcacheDiff:
    """`ipcache_diff` on packed keys and values, streaming over the map's entries (no copy of
    it). Consumes `desired`: what is left of it (new or changed entries) becomes `put`."""
    stale: list[bytes] = []
    foreign: list[bytes] = []
    for key, raw in current:
        wanted = desired.get(key)
        cluster = value_flags(raw) & FLAG_CLUSTER
        if wanted is None:
            if cluster:
                stale.append(key)
        elif not cluster:
            foreign.append(key)
            del desired[key]
        elif raw[:VALUE_SIZE] == wanted:
            del desired[key]  # held as wanted
    return PackedIpcacheDiff(desired, tuple(stale), tuple(foreign))
