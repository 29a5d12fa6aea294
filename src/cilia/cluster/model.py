"""The cluster's records as plain data, shared by the kvstore side (cilia.cluster.nodes,
cilia.cluster.ipcache) and the datapath side (the agent's datapath adapter)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RoutingMode(StrEnum):
    """How pod traffic crosses nodes (Cilium's --routing-mode)."""

    NATIVE = "native"  # pod CIDRs routed over the underlay, per-node routes
    TUNNEL = "tunnel"  # VXLAN (collect-metadata), the source identity in the VNI


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)  # slotted: the cluster holds one per remote endpoint IP
class IpcacheRecord:
    """One endpoint IP as published in the kvstore (`cilia/ipcache/<ip>`, under its node's lease)."""

    ip: IPAddress
    identity: int
    node: str
    node_ipv4: ipaddress.IPv4Address | None  # where the tunnel goes (VXLAN underlay is IPv4)
    node_ipv6: ipaddress.IPv6Address | None = None
    namespace: str = ""
    pod: str = ""


@dataclass(frozen=True, slots=True)
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
    remote_endpoints: Mapping[Network, RemoteEndpoint] = field(default_factory=dict)


_V6_TAG = 1 << 128  # IPv6 host keys carry it, so they never collide with an IPv4 address's int


class RemoteEndpoints(Mapping[Network, RemoteEndpoint]):
    """Host prefixes (/32, /128) -> RemoteEndpoint, held compactly: keyed by the address as an int
    (IPv6 tagged above 2^128) instead of an ip_network object each (~0.5 KiB apiece at 10,000
    remote endpoints). Reads as a Mapping of networks; equal to any mapping with the same items,
    and compared without building networks when the other side is a RemoteEndpoints too."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Iterable[tuple[IPAddress, RemoteEndpoint]] = ()) -> None:
        self._entries: dict[int, RemoteEndpoint] = {}
        for ip, endpoint in entries:
            self._entries[_host_key(ip)] = endpoint

    def __getitem__(self, prefix: Network) -> RemoteEndpoint:
        if not isinstance(prefix, ipaddress.IPv4Network | ipaddress.IPv6Network) or \
                prefix.prefixlen != prefix.max_prefixlen:
            raise KeyError(prefix)
        return self._entries[_host_key(prefix.network_address)]

    def __iter__(self) -> Iterator[Network]:
        for key in self._entries:
            yield _host_network(key)

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RemoteEndpoints):
            return self._entries == other._entries
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # a mapping: unhashable like dict

    def host_items(self) -> Iterator[tuple[IPAddress, RemoteEndpoint]]:
        """(address, endpoint) pairs, without building networks."""
        for key, endpoint in self._entries.items():
            yield _host_address(key), endpoint

    def identity_diff(self, previous: RemoteEndpoints) -> tuple[dict[IPAddress, int], list[IPAddress]]:
        """Address -> identity since `previous`: the addresses that are new or have another identity
        (with it), and the addresses gone. Compared on the int keys, so an unchanged endpoint costs
        no address object (tunnel endpoints are not compared)."""
        old, new = previous._entries, self._entries
        if old is new:
            return {}, []
        changed = {_host_address(key): endpoint.identity for key, endpoint in new.items()
                   if (was := old.get(key)) is None or was.identity != endpoint.identity}
        gone = [_host_address(key) for key in old.keys() - new.keys()]
        return changed, gone

    @classmethod
    def of(cls, endpoints: Mapping[Network, RemoteEndpoint]) -> RemoteEndpoints:
        """`endpoints` as a RemoteEndpoints (itself when it is one): its host prefixes only."""
        if isinstance(endpoints, RemoteEndpoints):
            return endpoints
        return cls((prefix.network_address, endpoint) for prefix, endpoint in endpoints.items()
                   if prefix.prefixlen == prefix.max_prefixlen)

    def __repr__(self) -> str:
        return f"RemoteEndpoints({len(self._entries)} entries)"


def _host_key(ip: IPAddress) -> int:
    return int(ip) | _V6_TAG if ip.version == 6 else int(ip)


def _host_address(key: int) -> IPAddress:
    if key & _V6_TAG:
        return ipaddress.IPv6Address(key ^ _V6_TAG)
    return ipaddress.IPv4Address(key)


def _host_network(key: int) -> Network:
    if key & _V6_TAG:
        return ipaddress.IPv6Network((key ^ _V6_TAG, 128))
    return ipaddress.IPv4Network((key, 32))
