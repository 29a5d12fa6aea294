"""The lab's topology file: nodes, namespaces, pods and external hosts, and for a cluster lab the
kvstore (etcd and its members), the routing mode and optionally a cluster pool the nodes claim
their pod CIDRs from (see docs/lab.md)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class TopologyError(Exception):
    pass


KVSTORES = ("local", "etcd")  # local: each node's own embedded store; etcd: one cluster's etcd
ROUTING_MODES = ("native", "tunnel")
MAX_ETCD_MEMBERS = 7  # etcd's own advice: clusters of 3, 5 or 7 members
DEFAULT_ETCD_MEMBERS = 3
# A cluster lab's pod CIDRs: the agents get these as --ipv4/6-native-routing-cidr (not masqueraded),
# so every node's pod CIDR must lie inside them.
CLUSTER_POD_RANGES = (ipaddress.IPv4Network("10.200.0.0/16"), ipaddress.IPv6Network("fd00:200::/48"))


@dataclass(frozen=True)
class PortSpec:
    port: int
    protocol: str = "tcp"  # tcp | udp | http
    name: str | None = None


@dataclass(frozen=True)
class NodeSpec:
    name: str
    index: int
    ipv4_pod_cidr: ipaddress.IPv4Network | None  # None: claimed from the cluster pool by its agent
    ipv6_pod_cidr: ipaddress.IPv6Network | None

    @property
    def underlay_ipv4(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(f"192.0.2.{10 + self.index}")

    @property
    def underlay_ipv6(self) -> ipaddress.IPv6Address:
        return ipaddress.IPv6Address(f"fd00:c1a::{10 + self.index:x}")

    @property
    def netns(self) -> str:
        return f"cilia-{self.name}"


@dataclass(frozen=True)
class PodSpec:
    name: str
    namespace: str
    node: str
    labels: dict[str, str] = field(default_factory=dict)
    ip: str | None = None
    ports: tuple[PortSpec, ...] = ()
    socket_lb: bool = True  # its processes run in the node's cgroup, where the socket LB hooks are

    @property
    def netns(self) -> str:
        return f"cilia-pod-{self.namespace}-{self.name}"[:60]

    @property
    def container_id(self) -> str:
        return f"cilia-{self.node}-{self.namespace}-{self.name}"


@dataclass(frozen=True)
class ExternalSpec:
    name: str
    index: int
    ports: tuple[PortSpec, ...] = ()

    @property
    def ipv4(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(f"198.51.100.{10 + self.index}")

    @property
    def ipv6(self) -> ipaddress.IPv6Address:
        return ipaddress.IPv6Address(f"2001:db8:100::{10 + self.index:x}")

    @property
    def netns(self) -> str:
        return f"cilia-ext-{self.name}"


@dataclass(frozen=True)
class EtcdMember:
    """One etcd member of a cluster lab: its own namespace on the fabric's underlay network."""

    index: int  # 1-based

    @property
    def name(self) -> str:
        return f"cilia-etcd-{self.index}"

    @property
    def netns(self) -> str:
        return self.name

    @property
    def ipv4(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(f"192.0.2.{200 + self.index}")

    @property
    def ipv6(self) -> ipaddress.IPv6Address:
        return ipaddress.IPv6Address(f"fd00:c1a::{200 + self.index:x}")


@dataclass(frozen=True)
class ClusterPool:
    """`clusterPool:` the nodes' pod CIDRs claimed from these pools in etcd by their agents."""

    ipv4: ipaddress.IPv4Network = CLUSTER_POD_RANGES[0]
    ipv4_mask_size: int = 24
    ipv6: ipaddress.IPv6Network = CLUSTER_POD_RANGES[1]
    ipv6_mask_size: int = 64

    def agent_args(self) -> list[str]:
        return ["--cluster-pool-ipv4-cidr", str(self.ipv4), "--cluster-pool-ipv4-mask-size", str(self.ipv4_mask_size),
                "--cluster-pool-ipv6-cidr", str(self.ipv6), "--cluster-pool-ipv6-mask-size", str(self.ipv6_mask_size)]


@dataclass(frozen=True)
class Topology:
    nodes: tuple[NodeSpec, ...]
    namespaces: dict[str, dict[str, str]]
    pods: tuple[PodSpec, ...]
    externals: tuple[ExternalSpec, ...]
    kvstore: str = "local"  # KVSTORES
    etcd_members: int = 0  # with kvstore etcd: how many members (default 3)
    routing: str = "native"  # ROUTING_MODES; only with kvstore etcd
    relay: bool = False  # run cilia-relay (every node's flows, the service map) in netns cilia-relay
    cluster_pool: ClusterPool | None = None  # only with kvstore etcd: pod CIDRs from the pool
    etcd_tls: bool = False  # etcd serves its clients over TLS (client certificates of the lab's CA)
    dns: bool = False  # run dnsmasq with the test zone on external host `dns` (cilia.lab.dns)

    @property
    def cluster(self) -> bool:
        """Whether the nodes share one etcd (a cluster lab) rather than each its own store."""
        return self.kvstore == "etcd"

    @property
    def members(self) -> tuple[EtcdMember, ...]:
        return tuple(EtcdMember(i + 1) for i in range(self.etcd_members))

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise TopologyError(f"no node named {name!r}")


def _list(raw: Any, where: str) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise TopologyError(f"{where}: must be a list")
    return raw


def _labels(raw: Any, where: str) -> dict[str, str]:
    """A map of labels; scalar values are read as strings, as before ({team: 1} is team=1)."""
    if raw is None:
        return {}
    scalar = str | int | float | bool
    if not isinstance(raw, dict) or not all(isinstance(k, scalar) and isinstance(v, scalar) for k, v in raw.items()):
        raise TopologyError(f"{where}: must be a map of strings")
    return {str(k): str(v) for k, v in raw.items()}


def _ports(raw: Any, where: str) -> tuple[PortSpec, ...]:
    ports = []
    for i, entry in enumerate(_list(raw, f"{where}.ports")):
        number = entry.get("port") if isinstance(entry, dict) else None
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
            raise TopologyError(f"{where}.ports[{i}].port: must be an integer 1-65535")
        protocol = str(entry.get("protocol", "tcp")).lower()
        if protocol not in ("tcp", "udp", "http"):
            raise TopologyError(f"{where}.ports[{i}].protocol: {protocol!r} is not tcp, udp or http")
        name = entry.get("name")
        if name is not None and not isinstance(name, str):
            raise TopologyError(f"{where}.ports[{i}].name: must be a string")
        ports.append(PortSpec(number, protocol, name))
    return tuple(ports)


def _network(raw: Any, default: str, where: str, version: int) -> Any:
    text = default if raw is None else raw
    if not isinstance(text, str):
        raise TopologyError(f"{where}: must be an IPv{version} CIDR string")
    try:
        return ipaddress.IPv4Network(text) if version == 4 else ipaddress.IPv6Network(text)
    except ValueError as exc:
        raise TopologyError(f"{where}: {exc}") from exc


FIELDS = ("nodes", "namespaces", "pods", "externals", "kvstore", "etcd", "routing", "relay", "clusterPool", "dns")
POOL_FIELDS = ("ipv4", "ipv4MaskSize", "ipv6", "ipv6MaskSize")


def _mask(raw: Any, default: int, network: ipaddress.IPv4Network | ipaddress.IPv6Network, where: str) -> int:
    mask = default if raw is None else raw
    if isinstance(mask, bool) or not isinstance(mask, int) or not network.prefixlen <= mask <= network.max_prefixlen:
        raise TopologyError(f"{where}: must be an integer {network.prefixlen}-{network.max_prefixlen} "
                            f"(a prefix length inside {network})")
    return mask


def _cluster_pool(raw: Any, kvstore: str, nodes: int, source: str) -> ClusterPool | None:
    """`clusterPool: true` (the defaults) or a mapping of POOL_FIELDS; only with kvstore etcd."""
    if raw is None or raw is False:
        return None
    if kvstore != "etcd":
        raise TopologyError(f"{source}: clusterPool: only with kvstore: etcd (the nodes claim their CIDRs in etcd)")
    if raw is True:
        raw = {}
    if not isinstance(raw, dict):
        raise TopologyError(f"{source}: clusterPool: must be true or a mapping like {{ipv4: 10.200.0.0/16, "
                            "ipv4MaskSize: 24}")
    unknown = set(map(str, raw)) - set(POOL_FIELDS)
    if unknown:
        raise TopologyError(f"{source}: clusterPool: unknown field {sorted(unknown)[0]!r}")
    defaults = ClusterPool()
    v4 = _network(raw.get("ipv4"), str(defaults.ipv4), f"{source}: clusterPool.ipv4", 4)
    v6 = _network(raw.get("ipv6"), str(defaults.ipv6), f"{source}: clusterPool.ipv6", 6)
    where = f"{source}: clusterPool"
    pool = ClusterPool(v4, _mask(raw.get("ipv4MaskSize"), defaults.ipv4_mask_size, v4, f"{where}.ipv4MaskSize"),
                       v6, _mask(raw.get("ipv6MaskSize"), defaults.ipv6_mask_size, v6, f"{where}.ipv6MaskSize"))
    for network, mask, key, allowed in ((pool.ipv4, pool.ipv4_mask_size, "ipv4", CLUSTER_POD_RANGES[0]),
                                        (pool.ipv6, pool.ipv6_mask_size, "ipv6", CLUSTER_POD_RANGES[1])):
        if not network.subnet_of(allowed):  # type: ignore[arg-type]
            raise TopologyError(f"{source}: clusterPool.{key}: {network} is not inside the cluster's pod range "
                                f"{allowed} (routed natively, not masqueraded)")
        if 1 << min(mask - network.prefixlen, 16) < nodes:
            raise TopologyError(f"{source}: clusterPool.{key}: {network} has fewer than {nodes} /{mask} CIDRs, "
                                "one per node")
    return pool


def _cluster(data: dict[Any, Any], source: str) -> tuple[str, int, str, bool]:
    """kvstore, the number of etcd members (0 without etcd), routing, etcd TLS: checked against
    each other."""
    kvstore = data.get("kvstore", "local")
    if not isinstance(kvstore, str) or kvstore not in KVSTORES:
        raise TopologyError(f"{source}: kvstore: {kvstore!r} is not local or etcd")
    etcd = data.get("etcd")
    if etcd is not None and kvstore != "etcd":
        raise TopologyError(f"{source}: etcd: only with kvstore: etcd")
    if etcd is None:
        etcd = {}
    if not isinstance(etcd, dict):
        raise TopologyError(f"{source}: etcd: must be a mapping like {{members: 3}}")
    unknown = set(map(str, etcd)) - {"members", "tls"}
    if unknown:
        raise TopologyError(f"{source}: etcd: unknown field {sorted(unknown)[0]!r}")
    members = etcd.get("members", DEFAULT_ETCD_MEMBERS)
    if isinstance(members, bool) or not isinstance(members, int) or not 1 <= members <= MAX_ETCD_MEMBERS:
        raise TopologyError(f"{source}: etcd.members: must be an integer 1-{MAX_ETCD_MEMBERS}")
    tls = etcd.get("tls", False)
    if not isinstance(tls, bool):
        raise TopologyError(f"{source}: etcd.tls: must be true or false")
    routing = data.get("routing")
    if routing is not None and kvstore != "etcd":
        raise TopologyError(f"{source}: routing: only with kvstore: etcd (the nodes learn each other's "
                            "pod CIDRs from etcd)")
    routing = "native" if routing is None else routing
    if not isinstance(routing, str) or routing not in ROUTING_MODES:
        raise TopologyError(f"{source}: routing: {routing!r} is not native or tunnel")
    return kvstore, members if kvstore == "etcd" else 0, routing, tls


def parse_topology(data: Any, source: str = "topology") -> Topology:
    """Every error names the source and the field (`lab.yaml: pods[1].namespace: ...`)."""
    if not isinstance(data, dict):
        raise TopologyError(f"{source}: must be a mapping with nodes, namespaces, pods, externals")
    unknown = set(map(str, data)) - set(FIELDS)
    if unknown:
        raise TopologyError(f"{source}: unknown field {sorted(unknown)[0]!r}")
    kvstore, members, routing, etcd_tls = _cluster(data, source)
    raw_nodes = _list(data.get("nodes"), f"{source}: nodes") or [{"name": "n1"}]
    pool = _cluster_pool(data.get("clusterPool"), kvstore, len(raw_nodes), source)
    nodes: list[NodeSpec] = []
    for i, raw in enumerate(raw_nodes):
        name = raw.get("name") if isinstance(raw, dict) else None
        if not isinstance(name, str) or not name.isascii() or not name.isalnum() or len(name) > 8:
            raise TopologyError(f"{source}: nodes[{i}].name must be alphanumeric, at most 8 characters")
        if name in (n.name for n in nodes):
            raise TopologyError(f"{source}: nodes[{i}].name: {name!r} is listed twice")
        if pool is not None:
            for key in ("podCIDRv4", "podCIDRv6"):
                if raw.get(key) is not None:
                    raise TopologyError(f"{source}: nodes[{i}].{key}: not with clusterPool (the node's agent "
                                        "claims its pod CIDR from the pool)")
            nodes.append(NodeSpec(name, i + 1, None, None))
            continue
        v4 = _network(raw.get("podCIDRv4"), f"10.200.{i + 1}.0/24", f"{source}: nodes[{i}].podCIDRv4", 4)
        # A cluster lab's default IPv6 pod CIDRs lie inside its native-routing range fd00:200::/48
        # (fd00:200:N::/64, a one-node lab's default, does not).
        v6_default = f"fd00:200:0:{i + 1:x}::/64" if kvstore == "etcd" else f"fd00:200:{i + 1}::/64"
        v6 = _network(raw.get("podCIDRv6"), v6_default, f"{source}: nodes[{i}].podCIDRv6", 6)
        if kvstore == "etcd":
            for cidr, allowed, key in ((v4, CLUSTER_POD_RANGES[0], "podCIDRv4"),
                                       (v6, CLUSTER_POD_RANGES[1], "podCIDRv6")):
                if not cidr.subnet_of(allowed):
                    raise TopologyError(f"{source}: nodes[{i}].{key}: {cidr} is not inside the cluster's pod "
                                        f"range {allowed} (routed natively, not masqueraded)")
        nodes.append(NodeSpec(name, i + 1, v4, v6))
    node_names = {n.name for n in nodes}
    namespaces: dict[str, dict[str, str]] = {"default": {}}
    for i, raw in enumerate(_list(data.get("namespaces"), f"{source}: namespaces")):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise TopologyError(f"{source}: namespaces[{i}].name is required")
        namespaces[raw["name"]] = _labels(raw.get("labels"), f"{source}: namespaces[{i}].labels")
    pods = []
    for i, raw in enumerate(_list(data.get("pods"), f"{source}: pods")):
        where = f"{source}: pods[{i}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise TopologyError(f"{where}.name is required")
        namespace = raw.get("namespace", "default")
        if not isinstance(namespace, str) or namespace not in namespaces:
            raise TopologyError(f"{where}.namespace: {namespace!r} is not listed under namespaces")
        node = raw.get("node", nodes[0].name)
        if not isinstance(node, str) or node not in node_names:
            raise TopologyError(f"{where}.node: {node!r} is not a node of this topology")
        labels = _labels(raw.get("labels"), f"{where}.labels")
        socket_lb = raw.get("socketLB", True)
        if not isinstance(socket_lb, bool):
            raise TopologyError(f"{where}.socketLB: must be true or false")
        ip = raw.get("ip")
        if ip is not None:
            try:
                ipaddress.ip_address(ip if isinstance(ip, str) else "")
            except ValueError:
                raise TopologyError(f"{where}.ip: {ip!r} is not an IP address") from None
        pods.append(PodSpec(raw["name"], namespace, node, labels, ip, _ports(raw.get("ports"), where), socket_lb))
    externals = []
    for i, raw in enumerate(_list(data.get("externals"), f"{source}: externals")):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise TopologyError(f"{source}: externals[{i}].name is required")
        externals.append(ExternalSpec(raw["name"], i, _ports(raw.get("ports"), f"{source}: externals[{i}]")))
    relay = data.get("relay", False)
    if not isinstance(relay, bool):
        raise TopologyError(f"{source}: relay: must be true or false")
    dns = data.get("dns", False)
    if not isinstance(dns, bool):
        raise TopologyError(f"{source}: dns: must be true or false")
    if dns and any(e.name == "dns" for e in externals):
        raise TopologyError(f"{source}: dns: an external host is already named 'dns'")
    if len(externals) > 40:
        raise TopologyError(f"{source}: externals: at most 40 (their addresses end below the DNS host's .53)")
    return Topology(tuple(nodes), namespaces, tuple(pods), tuple(externals), kvstore, members, routing, relay,
                    pool, etcd_tls, dns)


def load_topology(path: Path) -> Topology:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TopologyError(f"{path}: {exc}") from exc
    return parse_topology(data, str(path))
