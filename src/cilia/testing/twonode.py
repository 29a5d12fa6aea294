"""Two nodes in namespaces for the cross-node datapath's kernel tests: node netns `cilia-xn-a` and
`cilia-xn-b` on one underlay (a bridge in `cilia-xn-fabric`; each node's `eth0` is 192.0.2.11/.12 and
fd00:c1a::11/::12, a client outside the cluster in `cilia-xn-client` is 192.0.2.100 and
fd00:c1a::100), each node with one pod netns behind a real endpoint veth. Each node's datapath is
the agent's own: `DatapathAdapter` (opened, service and overlay programs attached, `sync_cluster`
called with a hand-made ClusterView) and `Datapath.attach_endpoint` for its pod. Work for a
namespace runs on a thread that entered it (`NetnsWorker`), so the test process itself never leaves
the root namespace and changes nothing there. Everything is named cilia-xn-* and removed on exit,
also when the body fails."""

from __future__ import annotations

import ctypes
import ipaddress
import os
import subprocess
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from cilia.agent.config import parse_config
from cilia.agent.datapath_adapter import DatapathAdapter
from cilia.bpf import remove_pins
from cilia.cluster.model import ClusterView, NodeRecord, RemoteEndpoint, RoutingMode
from cilia.datapath import EndpointConfig
from cilia.ipam import Ipam
from cilia.netlink import EndpointLinkSpec, NodeNetConfig, create_endpoint_link, setup_node_networking
from cilia.paths import NodePaths
from cilia.policy.mapstate import DirectionState, MapState, PortKey, PortValue

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
PREFIX = "cilia-xn"
CLIENT_NETNS = f"{PREFIX}-client"
CLIENT, CLIENT6 = "192.0.2.100", "fd00:c1a::100"  # outside the cluster, on the underlay
POD_IDENTITY = {"a": 300, "b": 301}
ENDPOINT_ID = 1


class NetnsWorker:
    """One thread inside a network namespace: `run(fn, ...)` executes there and returns its result.
    Sockets made by `fn` stay in that namespace whichever thread uses them afterwards."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"netns-{netns}",
                                        initializer=self._enter)

    def _enter(self) -> None:
        fd = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {self.netns}")
        finally:
            os.close(fd)

    def run(self, fn: Callable[..., T], *args: object, timeout: float = 30.0) -> T:
        return self.submit(fn, *args).result(timeout=timeout)

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        """Start `fn` there and return at once (a server's accept while a client connects)."""
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class Node:
    """One node: its netns, underlay addresses, pod CIDRs, pod and the agent's datapath adapter."""

    name: str  # "a" | "b"
    index: int  # 1 | 2
    mode: RoutingMode
    worker: NetnsWorker = field(init=False)
    pod_worker: NetnsWorker = field(init=False)
    adapter: DatapathAdapter = field(init=False)

    @property
    def netns(self) -> str:
        return f"{PREFIX}-{self.name}"

    @property
    def pod_netns(self) -> str:
        return f"{PREFIX}-{self.name}-pod"

    @property
    def agent_name(self) -> str:
        return f"xn-{self.name}"

    @property
    def ipv4(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(f"192.0.2.{10 + self.index}")

    @property
    def ipv6(self) -> ipaddress.IPv6Address:
        return ipaddress.IPv6Address(f"fd00:c1a::{10 + self.index}")

    @property
    def pod_cidr4(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.200.{self.index}.0/24")

    @property
    def pod_cidr6(self) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network(f"fd00:200:{self.index}::/64")

    @property
    def pod_ipv4(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(f"10.200.{self.index}.2")

    @property
    def pod_ipv6(self) -> ipaddress.IPv6Address:
        return ipaddress.IPv6Address(f"fd00:200:{self.index}::2")

    @property
    def identity(self) -> int:
        return POD_IDENTITY[self.name]

    def record(self) -> NodeRecord:
        return NodeRecord(self.agent_name, self.ipv4, self.ipv6, (self.pod_cidr4, self.pod_cidr6), self.mode)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def allow_all() -> MapState:
    return MapState(DirectionState(), DirectionState())


def allow_ingress_from(identity: int, protocol: int, port: int) -> MapState:
    """Ingress enforced: only `identity` on protocol/port (class 1); egress open."""
    ingress = DirectionState(lookup=True, enforced=True, classes={identity: 1},
                             ports={(1, PortKey(protocol, port, 16)): PortValue(1, 4242)})
    return MapState(ingress, DirectionState())


class TwoNodes:
    """A two-node cluster in namespaces, in one routing mode. A context manager."""

    def __init__(self, mode: RoutingMode) -> None:
        self.mode = mode
        self.a = Node("a", 1, mode)
        self.b = Node("b", 2, mode)
        self.nodes = (self.a, self.b)
        self._netns: list[str] = []
        self._workers: list[NetnsWorker] = []
        self.fabric: NetnsWorker
        self.client: NetnsWorker  # in CLIENT_NETNS, outside the cluster

    # ----- build -----------------------------------------------------------------------------------
    def __enter__(self) -> TwoNodes:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _add_netns(self, name: str) -> NetnsWorker:
        _ip("netns", "add", name)
        self._netns.append(name)
        worker = NetnsWorker(name)
        self._workers.append(worker)
        return worker

    def _build(self) -> None:
        fabric = f"{PREFIX}-fabric"
        self.fabric = self._add_netns(fabric)
        self.client = self._add_netns(CLIENT_NETNS)
        for node in self.nodes:
            node.worker = self._add_netns(node.netns)
            node.pod_worker = self._add_netns(node.pod_netns)
        # the underlay: a bridge in the fabric netns, one veth port per node and one for the client,
        # each created straight into its two namespaces
        _ip("-n", fabric, "link", "add", "br0", "type", "bridge")
        _ip("-n", fabric, "link", "set", "br0", "up")
        for port, netns in (("port-a", self.a.netns), ("port-b", self.b.netns), ("port-client", CLIENT_NETNS)):
            _ip("link", "add", port, "netns", fabric, "type", "veth", "peer", "name", "eth0", "netns", netns)
            _ip("-n", fabric, "link", "set", port, "master", "br0", "up")
        _ip("-n", CLIENT_NETNS, "link", "set", "lo", "up")
        _ip("-n", CLIENT_NETNS, "addr", "add", f"{CLIENT}/24", "dev", "eth0")
        _ip("-n", CLIENT_NETNS, "addr", "add", f"{CLIENT6}/64", "dev", "eth0", "nodad")
        _ip("-n", CLIENT_NETNS, "link", "set", "eth0", "up")
        for node in self.nodes:  # the world reaches each node's pods through that node
            _ip("-n", CLIENT_NETNS, "route", "add", str(node.pod_cidr4), "via", str(node.ipv4))
            _ip("-n", CLIENT_NETNS, "-6", "route", "add", str(node.pod_cidr6), "via", str(node.ipv6))
        for node in self.nodes:
            node.worker.run(self._setup_node, node)
        self.sync()

    def _setup_node(self, node: Node) -> None:
        _ip_netns = ["-n", node.netns]
        _ip(*_ip_netns, "link", "set", "lo", "up")
        _ip(*_ip_netns, "addr", "add", f"{node.ipv4}/24", "dev", "eth0")
        _ip(*_ip_netns, "addr", "add", f"{node.ipv6}/64", "dev", "eth0", "nodad")
        _ip(*_ip_netns, "link", "set", "eth0", "up")
        config = parse_config([
            "--node", node.agent_name, "--ipv4-pod-cidr", str(node.pod_cidr4), "--ipv6-pod-cidr", str(node.pod_cidr6),
            "--underlay-device", "eth0", "--routing-mode", self.mode.value, "--monitor-aggregation", "none",
            "--ipv4-native-routing-cidr", "10.200.0.0/16", "--ipv4-native-routing-cidr", "fd00:200::/32",
        ])
        remove_pins(config.paths.bpffs_dir)  # a previous run's, if it crashed
        router4, router6 = node.pod_cidr4[1], node.pod_cidr6[1]
        setup_node_networking(NodeNetConfig(router4, router6, node.pod_cidr4, node.pod_cidr6, "eth0",
                                            masquerade=True, native_routing_cidrs=config.native_routing_cidrs,
                                            tunnel_port=config.tunnel_port if self.mode is RoutingMode.TUNNEL
                                            else None))
        state = Path(f"/run/{PREFIX}-{node.name}-ipam.json")
        state.unlink(missing_ok=True)
        node.adapter = DatapathAdapter(config, Ipam(node.pod_cidr4, node.pod_cidr6, state))
        node.adapter.open()
        node.adapter.attach_service_programs("eth0", None)
        link = create_endpoint_link(EndpointLinkSpec(
            host_ifname=f"lxc{node.name}", container_netns=f"/run/netns/{node.pod_netns}", container_ifname="eth0",
            container_mac=None, mtu=1500 - node.adapter.encap_overhead, ipv4=node.pod_ipv4, ipv6=node.pod_ipv6,
            gateway_ipv4=router4, gateway_ipv6=router6))
        datapath = node.adapter.datapath
        datapath.policy.install(ENDPOINT_ID, allow_all())
        datapath.attach_endpoint(EndpointConfig(
            endpoint_id=ENDPOINT_ID, identity=node.identity, lxc_ifindex=link.host_ifindex, lxc_mac=link.host_mac,
            pod_mac=link.container_mac, pod_ipv4=node.pod_ipv4, pod_ipv6=node.pod_ipv6, router_ipv4=router4,
            router_ipv6=router6, aggregation=0, tunnel_ifindex=node.adapter.tunnel_ifindex))

    # ----- cluster ---------------------------------------------------------------------------------
    def view_for(self, node: Node) -> ClusterView:
        other = self.b if node is self.a else self.a
        tunnel = other.ipv4 if self.mode is RoutingMode.TUNNEL else None
        endpoints: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, RemoteEndpoint] = {
            ipaddress.ip_network(address): RemoteEndpoint(other.identity, tunnel)
            for address in (other.pod_ipv4, other.pod_ipv6)}
        return ClusterView(self.mode, node.agent_name, (self.a.record(), self.b.record()), endpoints)

    def sync(self) -> dict[str, int]:
        """sync_cluster on both nodes, as the cluster controller would call it; the changes each made."""
        return {node.name: node.worker.run(node.adapter.sync_cluster, self.view_for(node)) for node in self.nodes}

    def set_policy(self, node: Node, state: MapState) -> None:
        node.adapter.datapath.policy.install(ENDPOINT_ID, state)

    # ----- teardown --------------------------------------------------------------------------------
    def close(self) -> None:
        for node in self.nodes:
            adapter = getattr(node, "adapter", None)
            if adapter is not None:
                adapter.close()
        for worker in self._workers:
            worker.close()
        for name in reversed(self._netns):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False, timeout=10)
        for node in self.nodes:
            remove_pins(NodePaths(node.agent_name).bpffs_dir)
            Path(f"/run/{PREFIX}-{node.name}-ipam.json").unlink(missing_ok=True)
        self._netns.clear()
        self._workers.clear()

