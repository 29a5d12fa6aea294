"""Endpoint manager + policy engine + registry with fake links and datapath: the lifecycle states,
which endpoints a change regenerates, revisions, and fail-closed reasons."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cilia.api.models import EndpointCreateRequest
from cilia.endpoint.manager import EndpointManager
from cilia.endpoint.record import EndpointRecord
from cilia.endpoint.registry import EndpointRegistry
from cilia.endpoint.state import EndpointState, EndpointStateError, EndpointStateMachine
from cilia.endpoint.store import EndpointStore
from cilia.identity.allocator import LocalIdentityAllocator
from cilia.identity.cidr import Network
from cilia.ipam import Ipam
from cilia.policy import kinds as policy_kinds
from cilia.policy.engine import PolicyEngine, Settings
from cilia.policy.mapstate import MapState
from cilia.resources.kinds import CORE_KINDS, KindRegistry
from cilia.resources.store import LocalStore

S = EndpointState


class FakeLinks:
    def __init__(self) -> None:
        self.next_ifindex = 100

    def create(self, record: EndpointRecord, mtu: int) -> EndpointRecord:
        self.next_ifindex += 1
        return record.model_copy(update={"host_ifindex": self.next_ifindex, "host_mac": "02:00:00:00:00:01",
                                         "mac": "02:00:00:00:00:02"})

    def delete(self, record: EndpointRecord) -> None:
        pass

    def host_ifindex(self, host_ifname: str) -> int | None:
        return None


class FakeDatapath:
    """Both datapath Protocols; remembers the order of events and the installed states."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []
        self.states: dict[int, MapState] = {}
        self.failed: set[int] = set()
        self.installs: list[int] = []
        self.cidrs: dict[Network, int] = {}
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()

    def attach(self, record: EndpointRecord) -> None:
        self.log.append(("attach", record.id))

    def detach(self, record: EndpointRecord) -> None:
        self.log.append(("detach", record.id))

    def is_attached(self, record: EndpointRecord) -> bool:
        return True

    def install_policy(self, endpoint_id: int, state: MapState) -> bool:
        assert self.gate.wait(10)
        with self._lock:
            self.log.append(("install", endpoint_id))
            self.installs.append(endpoint_id)
            self.states[endpoint_id] = state
            self.failed.discard(endpoint_id)
        return True

    def fail_policy(self, endpoint_id: int) -> None:
        self.failed.add(endpoint_id)

    def remove_policy(self, endpoint_id: int) -> None:
        self.log.append(("remove", endpoint_id))
        self.states.pop(endpoint_id, None)

    def policy_endpoints(self) -> set[int]:
        return set(self.states)

    def add_cidr_prefixes(self, prefixes: dict[Network, int]) -> None:
        self.log.append(("cidr+", len(prefixes)))
        self.cidrs.update(prefixes)

    def remove_cidr_prefixes(self, prefixes: Iterable[Network]) -> None:
        for prefix in prefixes:
            self.cidrs.pop(prefix, None)


class Node:
    def __init__(self, tmp: Path, mode: str = "queue", max_entries: int = 0) -> None:
        self.resources = LocalStore(tmp / "resources.db", KindRegistry([*CORE_KINDS, *policy_kinds.KINDS]))
        self.identities = LocalIdentityAllocator(tmp / "identities.json")
        self.datapath = FakeDatapath()
        self.registry = EndpointRegistry()
        self.transitions: list[tuple[int, EndpointState, str]] = []
        self.registry.on_transition(lambda i, s, r: self.transitions.append((i, s, r)))
        self.policy = PolicyEngine(resources=self.resources, identities=self.identities, datapath=self.datapath,
                                   endpoints=self.registry, state_dir=tmp, settings=Settings(),
                                   max_entries=max_entries, workers=2, mode=mode)
        self.endpoints = EndpointManager(
            registry=self.registry, store=EndpointStore(tmp / "endpoints"),
            ipam=Ipam(ipaddress.IPv4Network("10.1.0.0/16"), None, tmp / "ipam.json"),
            identities=self.identities, resources=self.resources, links=FakeLinks(), datapath=self.datapath,
            policy=self.policy)
        self.resources.watch(self.policy.on_resource_event)
        self.policy.load()
        self.policy.start()

    def add(self, name: str, **labels: str) -> int:
        endpoint = self.endpoints.create(EndpointCreateRequest(
            container_id=f"c-{name}", netns=f"/run/netns/{name}", pod_name=name, labels={"app": name, **labels}))
        return endpoint.id

    def apply(self, *objects: dict[str, Any]) -> int:
        self.resources.apply(list(objects))
        return self.policy.revision

    def state(self, endpoint_id: int) -> EndpointState:
        found = self.registry.state(endpoint_id)
        assert found is not None
        return found[0]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path)
    yield n
    n.datapath.gate.set()
    n.policy.stop()


def cnp(name: str, subject: dict[str, str], ingress: list[dict[str, Any]] | None = None,
        egress: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"endpointSelector": {"matchLabels": subject}}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def test_state_machine_rejects_illegal_transitions() -> None:
    machine = EndpointStateMachine(1)
    with pytest.raises(EndpointStateError, match="creating -> ready"):
        machine.transition(S.READY, "too early")
    for state in (S.WAITING_FOR_IDENTITY, S.REGENERATING, S.NOT_READY, S.REGENERATING, S.READY, S.DISCONNECTING,
                  S.DISCONNECTED):
        machine.transition(state, "step")
    with pytest.raises(EndpointStateError):
        machine.transition(S.READY, "after the end")


def test_add_installs_policy_before_attaching_and_ends_ready(node: Node) -> None:
    endpoint_id = node.add("web")
    assert node.datapath.log.index(("install", endpoint_id)) < node.datapath.log.index(("attach", endpoint_id))
    assert node.state(endpoint_id) is S.READY
    machine_states = [s for i, s, _r in node.transitions if i == endpoint_id]
    assert machine_states == [S.READY]  # added as regenerating (held), released once attached
    (listed,) = node.endpoints.list_endpoints()
    assert listed.state is S.READY and "k8s:app=web" in listed.identity_labels
    assert '"labels":' in listed.model_dump_json()  # the wire name


def test_delete_goes_through_disconnecting_to_disconnected(node: Node) -> None:
    endpoint_id = node.add("web")
    assert node.endpoints.delete(endpoint_id)
    assert [s for i, s, _r in node.transitions if i == endpoint_id][-2:] == [S.DISCONNECTING, S.DISCONNECTED]
    assert ("remove", endpoint_id) in node.datapath.log
    assert node.registry.state(endpoint_id) is None and node.endpoints.list_endpoints() == []


def test_a_policy_selecting_one_endpoint_regenerates_only_that_one(node: Node) -> None:
    ids = {name: node.add(name) for name in ("a", "b", "c", "d")}
    node.datapath.installs.clear()
    revision = node.apply(cnp("a-only", {"app": "a"}, ingress=[{"fromEndpoints": [{"matchLabels": {"app": "b"}}]}]))
    result = node.policy.wait(revision, 5)
    assert result.reached and result.not_ready == {}
    assert node.datapath.installs == [ids["a"]]
    assert node.datapath.states[ids["a"]].ingress.enforced
    assert not node.datapath.states[ids["c"]].ingress.enforced
    # changing it to select c regenerates a (no longer selected) and c (now selected): the old and new versions
    node.datapath.installs.clear()
    revision = node.apply(cnp("a-only", {"app": "c"}, ingress=[{"fromEndpoints": [{"matchLabels": {"app": "b"}}]}]))
    assert node.policy.wait(revision, 5).reached
    assert sorted(node.datapath.installs) == sorted([ids["a"], ids["c"]])
    assert not node.datapath.states[ids["a"]].ingress.enforced and node.datapath.states[ids["c"]].ingress.enforced


def test_sync_mode_regenerates_every_endpoint_in_the_callers_thread(tmp_path: Path) -> None:
    node = Node(tmp_path, mode="sync")
    try:
        ids = [node.add(name) for name in ("a", "b", "c")]
        node.datapath.installs.clear()
        node.apply(cnp("a-only", {"app": "a"}, ingress=[{}]))
        assert sorted(node.datapath.installs) == sorted(ids)  # all of them, done before apply returned
    finally:
        node.policy.stop()


def test_a_new_peer_identity_reaches_the_endpoints_that_select_it_before_add_returns(node: Node) -> None:
    server = node.add("server")
    node.add("other")
    revision = node.apply(cnp("from-client", {"app": "server"},
                               ingress=[{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}]))
    assert node.policy.wait(revision, 5).reached
    node.datapath.installs.clear()
    client = node.add("client")
    client_identity = node.endpoints.get(client).identity
    assert client_identity in node.datapath.states[server].ingress.classes
    assert sorted(node.datapath.installs) == sorted([client, server])  # not "other"
    node.datapath.installs.clear()
    node.endpoints.delete(client)  # the identity is released: the server forgets it
    assert node.policy.wait(None, 5).reached
    assert client_identity not in node.datapath.states[server].ingress.classes
    assert node.datapath.installs == [server]


def test_endpoints_are_regenerating_while_queued_and_ready_after(node: Node) -> None:
    a = node.add("a")
    node.datapath.gate.clear()
    revision = node.apply(cnp("a", {"app": "a"}, ingress=[{}]))
    assert node.state(a) is S.REGENERATING
    assert [e.state for e in node.endpoints.list_endpoints()] == [S.REGENERATING]
    assert not node.policy.wait(revision, 0.05).reached
    node.datapath.gate.set()
    assert node.policy.wait(revision, 5).reached
    assert node.state(a) is S.READY
    assert [s for i, s, _r in node.transitions if i == a][-2:] == [S.REGENERATING, S.READY]


def test_a_policy_that_does_not_fit_fails_closed_with_the_reason(tmp_path: Path) -> None:
    node = Node(tmp_path, max_entries=3)
    try:
        a = node.add("a")
        assert node.state(a) is S.READY
        revision = node.apply(cnp("big", {"app": "a"}, ingress=[{"toPorts": [{"ports": [
            {"port": str(p), "protocol": "TCP"} for p in (1, 3, 5, 7, 9)]}]}]))
        result = node.policy.wait(revision, 5)
        assert result.reached and "--policy-map-max-entries" in result.not_ready[a]
        found = node.registry.state(a)
        assert found is not None and found[0] is S.NOT_READY and "failed closed" in found[1]
        assert a in node.datapath.failed
        node.resources.delete([{"kind": "CiliumNetworkPolicy", "metadata": {"name": "big", "namespace": "default"}}])
        assert node.policy.wait(None, 5).not_ready == {}
        assert node.state(a) is S.READY and a not in node.datapath.failed
    finally:
        node.policy.stop()


def test_settings_reach_every_endpoint_and_bump_the_revision(node: Node) -> None:
    ids = [node.add(name) for name in ("a", "b")]
    before = node.policy.revision
    revision = node.policy.patch_config("always", None, None)
    assert revision == before + 1
    assert node.policy.wait(revision, 5).reached
    assert all(node.datapath.states[i].ingress.enforced and node.datapath.states[i].egress.enforced for i in ids)


def test_cidr_identities_enter_the_ipcache_after_the_policies_naming_them(node: Node) -> None:
    a = node.add("a")
    node.datapath.gate.clear()
    revision = node.apply(cnp("to-net", {"app": "a"}, egress=[{"toCIDR": ["192.0.2.0/24"]}]))
    time.sleep(0.05)
    assert node.datapath.cidrs == {}  # not while a's policy is not installed
    node.datapath.gate.set()
    assert node.policy.wait(revision, 5).reached
    deadline = time.monotonic() + 5
    while not node.datapath.cidrs and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ipaddress.ip_network("192.0.2.0/24") in node.datapath.cidrs
    last_install = max(i for i, event in enumerate(node.datapath.log) if event == ("install", a))
    assert last_install < node.datapath.log.index(("cidr+", 1))


def test_an_unchanged_pod_update_is_no_change(node: Node) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "default"},
           "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80, "name": "http"}]}]}}
    node.apply(pod)
    revision = node.policy.revision
    pod["metadata"]["annotations"] = {"note": "x"}
    node.apply(pod)
    assert node.policy.revision == revision


def test_a_new_cidr_identity_regenerates_the_endpoints_whose_cidr_peers_contain_it(node: Node) -> None:
    ids = {name: node.add(name) for name in ("wide", "narrow", "other")}
    revision = node.apply(cnp("wide", {"app": "wide"}, ingress=[{"fromCIDR": ["10.9.0.0/16"]}]))
    assert node.policy.wait(revision, 5).reached
    node.datapath.installs.clear()
    # 10.9.1.0/24 becomes a CIDR identity of its own, inside wide's /16: wide must learn it
    revision = node.apply(cnp("narrow", {"app": "narrow"}, ingress=[{"fromCIDR": ["10.9.1.0/24", "192.0.2.0/24"]}]))
    assert node.policy.wait(revision, 5).reached
    assert sorted(node.datapath.installs) == sorted([ids["wide"], ids["narrow"]])
    node.datapath.installs.clear()
    # a prefix outside every other rule regenerates only the endpoint its own policy selects
    revision = node.apply(cnp("other", {"app": "other"}, ingress=[{"fromCIDR": ["198.51.100.0/24"]}]))
    assert node.policy.wait(revision, 5).reached
    assert node.datapath.installs == [ids["other"]]
