"""The lab's topology file: nodes, namespaces, pods and external hosts (see docs/lab.md)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class TopologyError(Exception):
    pass


@dataclass(frozen=True)
class PortSpec:
    port: int
    protocol: str = "tcp"  # tcp | udp | http
    name: str | None = None


@dataclass(frozen=True)
class NodeSpec:
    name: str
    index: int
    ipv4_pod_cidr: ipaddress.IPv4Network
    ipv6_pod_cidr: ipaddress.IPv6Network

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
class Topology:
    nodes: tuple[NodeSpec, ...]
    namespaces: dict[str, dict[str, str]]
    pods: tuple[PodSpec, ...]
    externals: tuple[ExternalSpec, ...]

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise TopologyError(f"no node named {name!r}")


def _ports(raw: Any, where: str) -> tuple[PortSpec, ...]:
    ports = []
    for i, entry in enumerate(raw or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("port"), int) or not 1 <= entry["port"] <= 65535:
            raise TopologyError(f"{where}.ports[{i}]: field 'port' must be an integer 1-65535")
        protocol = str(entry.get("protocol", "tcp")).lower()
        if protocol not in ("tcp", "udp", "http"):
            raise TopologyError(f"{where}.ports[{i}].protocol: {protocol!r} is not tcp, udp or http")
        ports.append(PortSpec(entry["port"], protocol, entry.get("name")))
    return tuple(ports)


def parse_topology(data: Any, source: str = "topology") -> Topology:
    if not isinstance(data, dict):
        raise TopologyError(f"{source}: must be a mapping with nodes, namespaces, pods, externals")
    unknown = set(data) - {"nodes", "namespaces", "pods", "externals"}
    if unknown:
        raise TopologyError(f"{source}: unknown field {sorted(unknown)[0]!r}")
    nodes = []
    for i, raw in enumerate(data.get("nodes") or [{"name": "n1"}]):
        name = raw.get("name") if isinstance(raw, dict) else None
        if not isinstance(name, str) or not name.isalnum() or len(name) > 8:
            raise TopologyError(f"{source}: nodes[{i}].name must be alphanumeric, at most 8 characters")
        try:
            v4 = ipaddress.IPv4Network(raw.get("podCIDRv4", f"10.200.{i + 1}.0/24"))
            v6 = ipaddress.IPv6Network(raw.get("podCIDRv6", f"fd00:200:{i + 1}::/64"))
        except ValueError as exc:
            raise TopologyError(f"{source}: nodes[{i}]: {exc}") from exc
        nodes.append(NodeSpec(name, i + 1, v4, v6))
    node_names = {n.name for n in nodes}
    namespaces: dict[str, dict[str, str]] = {"default": {}}
    for i, raw in enumerate(data.get("namespaces") or []):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise TopologyError(f"{source}: namespaces[{i}].name is required")
        namespaces[raw["name"]] = {str(k): str(v) for k, v in (raw.get("labels") or {}).items()}
    pods = []
    for i, raw in enumerate(data.get("pods") or []):
        where = f"{source}: pods[{i}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise TopologyError(f"{where}.name is required")
        namespace = raw.get("namespace", "default")
        if namespace not in namespaces:
            raise TopologyError(f"{where}.namespace: {namespace!r} is not listed under namespaces")
        node = raw.get("node", nodes[0].name)
        if node not in node_names:
            raise TopologyError(f"{where}.node: {node!r} is not a node of this topology")
        labels = {str(k): str(v) for k, v in (raw.get("labels") or {}).items()}
        socket_lb = raw.get("socketLB", True)
        if not isinstance(socket_lb, bool):
            raise TopologyError(f"{where}.socketLB: must be true or false")
        pods.append(PodSpec(raw["name"], namespace, node, labels, raw.get("ip"), _ports(raw.get("ports"), where),
                            socket_lb))
    externals = []
    for i, raw in enumerate(data.get("externals") or []):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise TopologyError(f"{source}: externals[{i}].name is required")
        externals.append(ExternalSpec(raw["name"], i, _ports(raw.get("ports"), f"{source}: externals[{i}]")))
    return Topology(tuple(nodes), namespaces, tuple(pods), tuple(externals))


def load_topology(path: Path) -> Topology:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TopologyError(f"{path}: {exc}") from exc
    return parse_topology(data, str(path))
