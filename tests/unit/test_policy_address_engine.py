"""The engine with address-based peers (fake links and datapath, as test_endpoint_lifecycle): an
ipBlock's selection follows pods as they come and go (local and remote), toServices follows a
service's backends, and only the endpoints whose rules care are regenerated."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_endpoint_lifecycle import FakeDatapath, FakeLinks

from cilia.api.models import EndpointCreateRequest
from cilia.endpoint.manager import EndpointManager
from cilia.endpoint.registry import EndpointRegistry
from cilia.endpoint.store import EndpointStore
from cilia.identity.allocator import LocalIdentityAllocator
from cilia.ipam import Ipam
from cilia.lb import kinds as lb_kinds
from cilia.policy import kinds as policy_kinds
from cilia.policy.engine import PolicyEngine, Settings
from cilia.policy.resolve import Verdict
from cilia.policy.rules import Direction
from cilia.resources.kinds import CORE_KINDS, KindRegistry
from cilia.resources.parse import ResourceError
from cilia.resources.store import LocalStore

OUT = Direction.EGRESS


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Node:
    def __init__(self, tmp: Path) -> None:
        self.resources = LocalStore(tmp / "resources.db",
                                    KindRegistry([*CORE_KINDS, *lb_kinds.KINDS, *policy_kinds.KINDS]))
        self.identities = LocalIdentityAllocator(tmp / "identities.json")
        self.datapath = FakeDatapath()
        self.registry = EndpointRegistry()
        self.policy = PolicyEngine(resources=self.resources, identities=self.identities, datapath=self.datapath,
                                   endpoints=self.registry, state_dir=tmp, settings=Settings(), max_entries=0)
        self.endpoints = EndpointManager(
            registry=self.registry, store=EndpointStore(tmp / "endpoints"),
            ipam=Ipam(ipaddress.IPv4Network("10.1.0.0/24"), None, tmp / "ipam.json"),
            identities=self.identities, resources=self.resources, links=FakeLinks(), datapath=self.datapath,
            policy=self.policy)
        self.resources.watch(self.policy.on_resource_event)
        self.policy.load()
        self.policy.start()
        self.ids: dict[str, int] = {}

    def add(self, name: str, **labels: str) -> int:
        endpoint = self.endpoints.create(EndpointCreateRequest(
            container_id=f"c-{name}", netns=f"/run/netns/{name}", pod_name=name, labels={"pod": name, **labels}))
        self.ids[name] = endpoint.id
        return endpoint.id

    def ip(self, name: str) -> str:
        record = self.registry.get(self.ids[name])
        assert record is not None and record.ipv4
        return record.ipv4

    def identity(self, name: str) -> int:
        record = self.registry.get(self.ids[name])
        assert record is not None
        return record.identity

    def apply(self, *objects: dict[str, Any]) -> None:
        self.resources.apply(list(objects))
        assert self.policy.wait(None, 5).reached

    def verdict(self, src: str, dst_identity: int, port: int = 80) -> Verdict:
        assert self.policy.wait(None, 5).reached
        state = self.datapath.states[self.ids[src]]
        return state.lookup(OUT, dst_identity, 6, port).verdict


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path)
    yield n
    n.policy.stop()


def egress_np(name: str, subject: str, *blocks: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"podSelector": {"matchLabels": {"pod": subject}}, "policyTypes": ["Egress"],
                     "egress": [{"to": [{"ipBlock": b} for b in blocks]}]}}


def to_services(name: str, subject: str, *services: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"endpointSelector": {"matchLabels": {"pod": subject}},
                     "egress": [{"toServices": list(services)}]}}


A, DD = Verdict.ALLOWED, Verdict.DEFAULT_DENIED


def test_ipblock_follows_pods_as_they_come_and_go(node: Node) -> None:
    node.add("client")
    node.add("other")
    node.add("server", app="s")
    node.apply(egress_np("to-server", "client", {"cidr": f"{node.ip('server')}/32"}))
    server = node.identity("server")
    assert node.verdict("client", server) is A
    node.datapath.installs.clear()
    node.add("server2", app="s")
    # the new endpoint has its own labels (pod=server2): a different identity, the server stays selected
    assert node.verdict("client", server) is A
    assert node.verdict("client", node.identity("server2")) is DD
    # the server goes away and comes back with another IP: no longer in the block
    node.endpoints.delete(node.ids["server"])
    node.datapath.installs.clear()
    node.add("server", app="s")
    assert node.verdict("client", node.identity("server")) is DD
    assert node.ids["client"] in node.datapath.installs  # the client learnt it
    assert node.ids["other"] not in node.datapath.installs  # nobody else was regenerated for it


def test_ipblock_identity_shared_by_a_pod_outside_is_not_selected(node: Node) -> None:
    node.add("client")
    first = node.endpoints.create(EndpointCreateRequest(container_id="c-r1", netns="/run/netns/r1", pod_name="rep",
                                                        labels={"app": "rep"}))
    record = node.registry.get(first.id)
    assert record is not None and record.ipv4
    node.apply(egress_np("to-rep", "client", {"cidr": f"{record.ipv4}/32"}))
    assert node.verdict("client", record.identity) is A
    node.endpoints.create(EndpointCreateRequest(container_id="c-r2", netns="/run/netns/r2", pod_name="rep",
                                                labels={"app": "rep"}))  # same labels: same identity, other IP
    assert node.verdict("client", record.identity) is DD


def test_remote_endpoints_reach_the_selection(node: Node) -> None:
    node.add("client")
    node.add("db", app="db")
    node.apply(egress_np("to-net", "client", {"cidr": "10.1.0.0/24"}))
    db = node.identity("db")
    assert node.verdict("client", db) is A
    revision = node.policy.cluster_endpoints_changed({ipaddress.ip_address("10.2.0.9"): db},
                                                     [ipaddress.ip_network("10.2.0.0/24")])
    assert revision is not None  # a pod of db on another node, outside the block
    assert node.verdict("client", db) is DD
    assert node.policy.cluster_endpoints_changed({ipaddress.ip_address("10.2.0.9"): db}) is None  # no change
    assert node.policy.cluster_endpoints_changed({}) is not None
    assert node.verdict("client", db) is A


def service(name: str, selector: dict[str, str] | None = None, **labels: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"port": 80}]}
    if selector is not None:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default",
                                                                 "labels": labels}, "spec": spec}


def endpoint_slice(service_name: str, *addresses: str) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service_name}-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "ports": [{"port": 80}],
            "endpoints": [{"addresses": [a]} for a in addresses]}


def test_to_services_follows_the_backends(node: Node) -> None:
    node.add("client")
    node.add("bystander")
    node.add("web1", app="web")
    node.add("db", app="db")
    node.apply(service("web", {"app": "web"}), to_services("to-web", "client", {"k8sService": {"serviceName": "web"}}))
    assert node.verdict("client", node.identity("web1")) is A
    assert node.verdict("client", node.identity("db")) is DD
    # a backend added (a new pod the selector picks) and the selector changed: the policy follows
    node.add("web2", app="web")
    assert node.verdict("client", node.identity("web2")) is A
    node.datapath.installs.clear()
    node.apply(service("web", {"app": "db"}))
    assert node.verdict("client", node.identity("db")) is A
    assert node.verdict("client", node.identity("web1")) is DD
    assert node.datapath.installs == [node.ids["client"]]  # only the endpoint whose rule names the service
    # a selector-less service's EndpointSlice: a pod address and an outside address
    node.apply(service("ext"), to_services("to-ext", "bystander", {"k8sService": {"serviceName": "ext"}}),
               endpoint_slice("ext", node.ip("web1"), "192.0.2.7"))
    assert node.verdict("bystander", node.identity("web1")) is A
    cidr = node.policy.cidrs.current()[ipaddress.ip_network("192.0.2.7/32")]
    assert node.verdict("bystander", cidr) is A
    # in the ipcache once every endpoint reflects the revision (a callback of the queue's workers)
    assert eventually(lambda: node.datapath.cidrs.get(ipaddress.ip_network("192.0.2.7/32")) == cidr)
    node.apply(endpoint_slice("ext", "192.0.2.7"))  # the pod backend removed
    assert node.verdict("bystander", node.identity("web1")) is DD
    node.resources.delete([endpoint_slice("ext")])
    assert node.policy.wait(None, 5).reached
    assert ipaddress.ip_network("192.0.2.7/32") not in node.policy.cidrs.current()


def test_bad_to_services_is_rejected_and_the_previous_version_stays(node: Node) -> None:
    node.add("client")
    node.add("web1", app="web")
    node.apply(service("web", {"app": "web"}), to_services("to-web", "client", {"k8sService": {"serviceName": "web"}}))
    with pytest.raises(ResourceError, match=r"toServices\[0\]\.k8sService\.serviceName': is required"):
        node.resources.apply([to_services("to-web", "client", {"k8sService": {"namespace": "default"}})])
    assert node.verdict("client", node.identity("web1")) is A


def test_the_cluster_view_reaches_policy_before_the_datapath(node: Node) -> None:
    """PolicyAwareClusterSync: the engine learns the remote endpoints (and waits for the endpoints
    to learn the new selection) before the view's ipcache entries are written."""
    from cilia.agent.cluster_policy import PolicyAwareClusterSync
    from cilia.cluster.model import ClusterView, NodeRecord, RemoteEndpoint, RoutingMode

    node.add("client")
    node.add("db", app="db")
    node.apply(egress_np("to-net", "client", {"cidr": "10.1.0.0/24"}))
    db = node.identity("db")
    order: list[str] = []

    class Datapath:
        def sync_cluster(self, view: ClusterView) -> object:
            order.append("datapath")
            order.append("db-selected" if node.verdict("client", db) is A else "db-not-selected")
            return 0

    sync = PolicyAwareClusterSync(Datapath(), node.policy)
    other = NodeRecord("n2", ipaddress.IPv4Address("192.168.0.2"), None, (ipaddress.ip_network("10.2.0.0/24"),),
                       RoutingMode.NATIVE)
    view = ClusterView(RoutingMode.NATIVE, "n1", (other,),
                       {ipaddress.ip_network("10.2.0.9/32"): RemoteEndpoint(db, None)})
    sync.sync_cluster(view)
    assert order == ["datapath", "db-not-selected"]  # withdrawn before the remote entry went live
    sync.sync_cluster(ClusterView(RoutingMode.NATIVE, "n1", (other,), {}))
    assert order[-1] == "db-selected"
