"""Address-based peers: a NetworkPolicy ipBlock selects pods by IP (Kubernetes), a Cilium CIDR
rule does not (cilium/cilium#9209), and toServices selects a service's backends. Each verdict is
also checked through the compressed map state, as in test_policy_resolution."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
import yaml

from cilia.identity.cidr import CidrIdentities, cidr_labels
from cilia.identity.labels import Label, LabelSet
from cilia.policy.addresses import IPAddress, ServiceFacts, address_peers, select
from cilia.policy.kinds import parse_policy, policy_ref
from cilia.policy.mapstate import PeerIndex, compute_map_state
from cilia.policy.repository import PolicyRepository
from cilia.policy.resolve import Verdict, decide, resolve_endpoint
from cilia.policy.rules import CidrPeer, Direction, IdentityView
from cilia.policy.selector import labels_of
from cilia.policy.services import service_facts

A, DD, D = Verdict.ALLOWED, Verdict.DEFAULT_DENIED, Verdict.DENIED
OUT, IN = Direction.EGRESS, Direction.INGRESS


def pod_labels(namespace: str, **labels: str) -> LabelSet:
    return LabelSet.from_k8s(labels, namespace, {})


# name -> (identity labels, IPs). "x/rep1" and "x/rep2" share one identity (same labels).
PODS: dict[str, tuple[LabelSet, tuple[str, ...]]] = {
    "x/client": (pod_labels("x", pod="client"), ("10.0.1.10",)),
    "x/server-a": (pod_labels("x", pod="server-a"), ("10.0.1.20",)),
    "x/server-b": (pod_labels("x", pod="server-b"), ("10.0.1.30",)),
    "x/far": (pod_labels("x", pod="far"), ("10.0.2.40",)),
    "x/rep1": (pod_labels("x", app="rep"), ("10.0.1.50",)),
    "x/rep2": (pod_labels("x", app="rep"), ("10.0.2.50",)),
    "x/web1": (pod_labels("x", app="web"), ("10.0.1.60", "fd00::60")),
    "y/web": (pod_labels("y", app="web"), ("10.0.1.70",)),
    "x/db": (pod_labels("x", app="db"), ("10.0.1.80",)),
}
IDS: dict[LabelSet, int] = {}
for _labels, _ips in PODS.values():
    IDS.setdefault(_labels, 256 + len(IDS))


def identity_of(name: str) -> int:
    return IDS[PODS[name][0]]


class World:
    def __init__(self, documents: str, services: list[ServiceFacts] | None = None,
                 extra_addresses: dict[str, int] | None = None) -> None:
        self.repository = PolicyRepository()
        for obj in yaml.safe_load_all(documents):
            if obj["kind"] != "CiliumClusterwideNetworkPolicy":
                obj["metadata"].setdefault("namespace", "x")
            self.repository.replace(policy_ref(obj), parse_policy(obj))
        rules = self.repository.rules()
        pods = [IdentityView(number, labels) for labels, number in IDS.items()]
        addresses: dict[int, set[IPAddress]] = {}
        for labels, ips in PODS.values():
            addresses.setdefault(IDS[labels], set()).update(ipaddress.ip_address(ip) for ip in ips)
        for ip, number in (extra_addresses or {}).items():  # remote endpoints
            addresses.setdefault(number, set()).add(ipaddress.ip_address(ip))
        self.selection = select(address_peers(rules), pods, addresses, services or [],
                                [ipaddress.ip_network("10.9.0.0/16")])
        prefixes = {p for r in rules for d in Direction for e in r.entries(d) for peer in e.peers
                    if isinstance(peer, CidrPeer) for p in (peer.network, *peer.excepts)}
        self.cidrs, _ = CidrIdentities().sync(prefixes | self.selection.service_prefixes.keys())
        self.universe = [IdentityView(v.id, v.labels, None, self.selection.pods.get(v.id, frozenset()))
                         for v in pods]
        self.universe += [IdentityView(2, LabelSet([Label("reserved", "world")]))]
        self.universe += [IdentityView(i, cidr_labels(p), p, self.selection.service_prefixes.get(p, frozenset()))
                          for p, i in self.cidrs.items()]
        self.views = {v.id: v for v in self.universe}
        self.index = PeerIndex(self.universe)

    def peer(self, name: str) -> IdentityView:
        if name in PODS:
            return self.views[identity_of(name)]
        address = ipaddress.ip_address(name)
        matches = [(p, i) for p, i in self.cidrs.items() if address in p]
        if not matches:
            return self.views[2]
        return self.views[max(matches, key=lambda m: m[0].prefixlen)[1]]

    def verdict(self, endpoint: str, direction: Direction, peer: str, port: int = 80) -> Verdict:
        policy = resolve_endpoint(self.repository.rules(), PODS[endpoint][0])
        view = self.peer(peer)
        reference = decide(policy.direction(direction), view, 6, port)
        datapath = compute_map_state(policy, self.index).lookup(direction, view.id, 6, port)
        assert (reference.verdict, reference.rule_id) == (datapath.verdict, datapath.rule_id), (
            f"map state disagrees with the rules for {endpoint} {direction} {peer}:{port}")
        return reference.verdict


def np_egress(*blocks: dict[str, Any], subject: str = "client") -> str:
    """The upstream e2e suite's shape: the client may reach the listed ipBlocks (and nothing else)."""
    peers = [{"ipBlock": b} for b in blocks]
    return yaml.safe_dump({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "egress-cidr"},
        "spec": {"podSelector": {"matchLabels": {"pod": subject}}, "policyTypes": ["Egress"],
                 "egress": [{"to": peers}]}})


# ----- NetworkPolicy ipBlock selects pods --------------------------------------------------------------
def test_ipblock_selects_a_pod_whose_ip_is_inside() -> None:
    # "should allow egress access to server in CIDR block"
    world = World(np_egress({"cidr": "10.0.1.20/32"}))
    assert world.verdict("x/client", OUT, "x/server-a") is A
    assert world.verdict("x/client", OUT, "x/server-b") is DD  # outside the block
    assert world.verdict("x/client", OUT, "x/far") is DD


def test_ipblock_except_leaves_the_excepted_pod_out() -> None:
    # "... with except": the /24 minus server-b
    world = World(np_egress({"cidr": "10.0.1.0/24", "except": ["10.0.1.30/32"]}))
    assert world.verdict("x/client", OUT, "x/server-a") is A
    assert world.verdict("x/client", OUT, "x/server-b") is DD
    assert world.verdict("x/client", OUT, "x/far") is DD  # 10.0.2.0/24
    assert world.verdict("x/client", OUT, "10.0.1.99") is A  # an address outside the cluster still matches
    assert world.verdict("x/client", OUT, "10.0.1.30") is DD


def test_an_ip_in_both_a_cidr_and_another_blocks_except_is_allowed() -> None:
    # "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed"
    world = World(np_egress({"cidr": "10.0.1.0/24", "except": ["10.0.1.30/32"]}, {"cidr": "10.0.1.30/32"}))
    assert world.verdict("x/client", OUT, "x/server-b") is A
    assert world.verdict("x/client", OUT, "x/server-a") is A
    assert world.verdict("x/client", OUT, "x/far") is DD


def test_ipblock_selects_pods_on_ingress_too() -> None:
    world = World(yaml.safe_dump({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "in"},
        "spec": {"podSelector": {"matchLabels": {"pod": "server-a"}},
                 "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.1.0/28"}}]}]}}))
    assert world.verdict("x/server-a", IN, "x/client") is A  # 10.0.1.10 in 10.0.1.0/28
    assert world.verdict("x/server-a", IN, "x/server-b") is DD  # 10.0.1.30 is not


def test_an_identity_straddling_the_block_is_not_selected() -> None:
    """rep1 (inside) and rep2 (outside) share one identity: selecting it would let the client
    reach rep2, which the block excludes, so neither is selected."""
    world = World(np_egress({"cidr": "10.0.1.0/24"}))
    assert world.verdict("x/client", OUT, "x/rep1") is DD
    assert world.verdict("x/client", OUT, "x/rep2") is DD
    # every IP of the identity (of the block's family) inside: selected
    world = World(np_egress({"cidr": "10.0.0.0/16"}))
    assert world.verdict("x/client", OUT, "x/rep1") is A
    assert world.verdict("x/client", OUT, "x/web1") is A  # dual stack: its IPv4 address is inside
    world = World(np_egress({"cidr": "fd00::/64"}))
    assert world.verdict("x/client", OUT, "x/web1") is A
    assert world.verdict("x/client", OUT, "x/rep1") is DD  # no IPv6 address at all


def test_remote_endpoints_count_as_the_identitys_addresses() -> None:
    world = World(np_egress({"cidr": "10.0.1.0/24"}), extra_addresses={"10.0.3.1": identity_of("x/db")})
    assert world.verdict("x/client", OUT, "x/db") is DD  # a pod of db on another node is outside
    world = World(np_egress({"cidr": "10.0.0.0/16"}), extra_addresses={"10.0.3.1": identity_of("x/db")})
    assert world.verdict("x/client", OUT, "x/db") is A


def test_cilium_cidr_rules_do_not_select_pods() -> None:
    """cilium/cilium#9209: toCIDR / toCIDRSet / fromCIDR keep Cilium's meaning."""
    for egress in ({"toCIDR": ["10.0.1.20/32"]}, {"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}]}):
        world = World(yaml.safe_dump({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "c"},
            "spec": {"endpointSelector": {"matchLabels": {"pod": "client"}}, "egress": [egress]}}))
        assert world.verdict("x/client", OUT, "x/server-a") is DD
        assert world.verdict("x/client", OUT, "10.0.1.20") is A  # the address as a CIDR identity
    world = World(yaml.safe_dump({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "c"},
        "spec": {"endpointSelector": {"matchLabels": {"pod": "server-a"}}, "ingress": [{"fromCIDR": ["10.0.0.0/8"]}]}}))
    assert world.verdict("x/server-a", IN, "x/client") is DD
    assert world.selection.pods == {}


def test_ipblock_peer_is_marked_cilium_cidr_is_not() -> None:
    np_rules = parse_policy(yaml.safe_load(np_egress({"cidr": "10.0.1.0/24"}).replace("egress-cidr", "n"))
                            | {"metadata": {"name": "n", "namespace": "x"}})
    (peer,) = np_rules[0].egress[0].peers
    assert isinstance(peer, CidrPeer) and peer.selects_pods and str(peer) == "ipBlock 10.0.1.0/24"


# ----- toServices ------------------------------------------------------------------------------------
def cnp_to_services(*services: dict[str, Any], deny: bool = False, ports: list[dict[str, Any]] | None = None,
                    kind: str = "CiliumNetworkPolicy") -> str:
    entry: dict[str, Any] = {"toServices": list(services)}
    if ports is not None:
        entry["toPorts"] = [{"ports": ports}]
    spec: dict[str, Any] = {"endpointSelector": {"matchLabels": {"pod": "client"}},
                            "egressDeny" if deny else "egress": [entry]}
    metadata: dict[str, Any] = {"name": "svc"}
    if deny:
        spec["egress"] = [{"toEntities": ["all"]}]
    return yaml.safe_dump({"apiVersion": "cilium.io/v2", "kind": kind, "metadata": metadata, "spec": spec})


WEB = ServiceFacts("x", "web", labels_of(["tier=front"]), {"app": "web"})
WEB_Y = ServiceFacts("y", "web", labels_of(["tier=front"]), {"app": "web"})
EXTERNAL = ServiceFacts("x", "ext", labels_of([]), None,
                        ((ipaddress.ip_address("192.0.2.7"), False), (ipaddress.ip_address("10.0.1.80"), True),
                         (ipaddress.ip_address("10.9.1.1"), False), (ipaddress.ip_address("10.9.1.2"), True)))


def test_to_services_by_name_allows_the_backends_of_a_selector_service() -> None:
    world = World(cnp_to_services({"k8sService": {"serviceName": "web"}}), [WEB, WEB_Y])
    assert world.verdict("x/client", OUT, "x/web1") is A
    assert world.verdict("x/client", OUT, "y/web") is DD  # same name in another namespace: not the policy's
    assert world.verdict("x/client", OUT, "x/db") is DD
    assert world.verdict("x/client", OUT, "192.0.2.7") is DD


def test_to_services_namespace_and_ccnp_every_namespace() -> None:
    world = World(cnp_to_services({"k8sService": {"serviceName": "web", "namespace": "y"}}), [WEB, WEB_Y])
    assert world.verdict("x/client", OUT, "y/web") is A and world.verdict("x/client", OUT, "x/web1") is DD
    world = World(cnp_to_services({"k8sService": {"serviceName": "web"}}, kind="CiliumClusterwideNetworkPolicy"),
                  [WEB, WEB_Y])
    assert world.verdict("x/client", OUT, "y/web") is A and world.verdict("x/client", OUT, "x/web1") is A


def test_to_services_by_selector_on_service_labels() -> None:
    world = World(cnp_to_services({"k8sServiceSelector": {"selector": {"matchLabels": {"tier": "front"}}}}),
                  [WEB, WEB_Y, EXTERNAL])
    assert world.verdict("x/client", OUT, "x/web1") is A and world.verdict("x/client", OUT, "y/web") is DD
    world = World(cnp_to_services({"k8sServiceSelector": {"selector": {"matchLabels": {"tier": "back"}}}}),
                  [WEB, WEB_Y])
    assert world.verdict("x/client", OUT, "x/web1") is DD


def test_to_services_selector_less_service_endpoints() -> None:
    """An EndpointSlice address that is a known pod selects that pod's identity; one that is no
    pod becomes a /32 CIDR identity; a Pod targetRef or a pod CIDR address unknown here none."""
    world = World(cnp_to_services({"k8sService": {"serviceName": "ext"}}), [EXTERNAL])
    assert world.verdict("x/client", OUT, "192.0.2.7") is A
    assert world.verdict("x/client", OUT, "x/db") is A
    assert world.verdict("x/client", OUT, "192.0.2.8") is DD
    assert set(world.selection.service_prefixes) == {ipaddress.ip_network("192.0.2.7/32")}


def test_to_services_ports_and_deny() -> None:
    world = World(cnp_to_services({"k8sService": {"serviceName": "web"}}, ports=[{"port": "80", "protocol": "TCP"}]),
                  [WEB])
    assert world.verdict("x/client", OUT, "x/web1", 80) is A
    assert world.verdict("x/client", OUT, "x/web1", 81) is DD
    world = World(cnp_to_services({"k8sService": {"serviceName": "web"}}, deny=True), [WEB])
    assert world.verdict("x/client", OUT, "x/web1") is D
    assert world.verdict("x/client", OUT, "x/db") is A


def test_service_facts_from_objects() -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext", "namespace": "x",
                                                                   "labels": {"tier": "front"}},
               "spec": {"ports": [{"port": 80}]}}
    endpoint_slice = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                      "metadata": {"name": "ext-1", "namespace": "x", "labels": {"kubernetes.io/service-name": "ext"}},
                      "addressType": "IPv4", "ports": [{"port": 80}],
                      "endpoints": [{"addresses": ["192.0.2.7"]},
                                    {"addresses": ["192.0.2.8"], "conditions": {"ready": False}},
                                    {"addresses": ["10.0.1.80"], "targetRef": {"kind": "Pod", "name": "db"}}]}
    broken = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "Bad!"}, "spec": {}}
    (facts,) = service_facts([service, broken], [endpoint_slice])
    assert (facts.namespace, facts.name, facts.selector) == ("x", "ext", None)
    assert facts.endpoints == ((ipaddress.ip_address("10.0.1.80"), True), (ipaddress.ip_address("192.0.2.7"), False))
    assert labels_of(["tier=front"]) == facts.labels


@pytest.mark.parametrize("peer", [{"k8sService": {"serviceName": "web"}},
                                  {"k8sServiceSelector": {"selector": {}, "namespace": "x"}}])
def test_to_services_parses_into_one_service_peer(peer: dict[str, Any]) -> None:
    obj = yaml.safe_load(cnp_to_services(peer))
    obj["metadata"]["namespace"] = "x"
    (rule,) = parse_policy(obj)
    (entry,) = rule.egress
    assert [str(p) for p in entry.peers] in (["service x/web"], ["services x {} (all pods)"])
    assert rule.enables_egress
