"""Policy semantics as tables, written from the Kubernetes NetworkPolicy and Cilium policy docs.

Each case: policies (YAML), a peer and an endpoint (by labels), a port -> expected verdict.
Every case is also checked through the compressed map state the datapath uses, so the two
answers cannot drift apart.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
import yaml

from cilia.identity.cidr import CidrIdentities, cidr_labels
from cilia.identity.labels import Label, LabelSet
from cilia.policy.kinds import parse_policy, policy_ref
from cilia.policy.mapstate import PeerIndex, compute_map_state, range_prefixes
from cilia.policy.repository import PolicyRepository
from cilia.policy.resolve import Enforcement, Verdict, decide, resolve_endpoint
from cilia.policy.rules import CidrPeer, Direction, IdentityView

NS_LABELS = {"x": {"team": "x"}, "y": {"team": "y"}, "z": {"team": "z"}}


def pod(namespace: str, name: str, **labels: str) -> LabelSet:
    return LabelSet.from_k8s({"pod": name, **labels}, namespace, NS_LABELS.get(namespace, {}))


PODS = {f"{ns}/{p}": pod(ns, p) for ns in ("x", "y", "z") for p in ("a", "b", "c")}
RESERVED = {"host": 1, "world": 2, "remote-node": 6, "health": 4}
IDS = {name: 256 + i for i, name in enumerate(sorted(PODS))}


class World:
    """Rules, identities (pods, reserved, CIDR) and the two ways of answering a question."""

    def __init__(self, documents: str, enforcement: Enforcement = Enforcement.DEFAULT) -> None:
        self.repository = PolicyRepository()
        for obj in yaml.safe_load_all(documents):
            obj.setdefault("metadata", {})
            if obj["kind"] != "CiliumClusterwideNetworkPolicy":
                obj["metadata"].setdefault("namespace", "x")
            self.repository.replace(policy_ref(obj), parse_policy(obj))
        self.enforcement = enforcement
        prefixes = {p for r in self.repository.rules() for d in Direction for e in r.entries(d)
                    for peer in e.peers if isinstance(peer, CidrPeer) for p in (peer.network, *peer.excepts)}
        self.cidrs, _ = CidrIdentities().sync(prefixes)
        self.universe = [IdentityView(IDS[n], labels) for n, labels in PODS.items()]
        self.universe += [IdentityView(i, LabelSet([Label("reserved", name)])) for name, i in RESERVED.items()]
        self.universe += [IdentityView(i, cidr_labels(p), p) for p, i in self.cidrs.items()]
        self.index = PeerIndex(self.universe)

    def identity(self, name: str) -> IdentityView:
        if name in PODS:
            return IdentityView(IDS[name], PODS[name])
        if name in RESERVED:
            return IdentityView(RESERVED[name], LabelSet([Label("reserved", name)]))
        address = ipaddress.ip_address(name)  # an external address: its most specific CIDR identity
        matches = [(p, i) for p, i in self.cidrs.items() if address in p]
        if not matches:
            return IdentityView(2, LabelSet([Label("reserved", "world")]))
        prefix, number = max(matches, key=lambda m: m[0].prefixlen)
        return IdentityView(number, cidr_labels(prefix), prefix)

    def verdict(self, endpoint: str, direction: Direction, peer: str, port: int, protocol: int = 6) -> Verdict:
        policy = resolve_endpoint(self.repository.rules(), PODS[endpoint], enforcement=self.enforcement)
        peer_id = self.identity(peer)
        reference = decide(policy.direction(direction), peer_id, protocol, port)
        datapath = compute_map_state(policy, self.index).lookup(direction, peer_id.id, protocol, port)
        assert (reference.verdict, reference.rule_id) == (datapath.verdict, datapath.rule_id), (
            f"map state disagrees with the rules for {peer} -> {endpoint}:{port}")
        return reference.verdict


A, D, DD = Verdict.ALLOWED, Verdict.DENIED, Verdict.DEFAULT_DENIED
IN, OUT = Direction.INGRESS, Direction.EGRESS

NP_ALLOW_B = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]
"""

CASES: list[tuple[str, str, Enforcement, list[tuple[str, Direction, str, int, int, Verdict]]]] = [
    ("no policy: nothing is enforced", "", Enforcement.DEFAULT,
     [("x/a", IN, "z/c", 81, 6, A), ("x/a", OUT, "world", 443, 6, A)]),
    ("NetworkPolicy podSelector is namespace-scoped; ports by number", NP_ALLOW_B, Enforcement.DEFAULT,
     [("x/a", IN, "x/b", 80, 6, A), ("x/a", IN, "y/b", 80, 6, DD), ("x/a", IN, "x/b", 81, 6, DD),
      ("x/a", IN, "x/b", 80, 17, DD), ("x/b", IN, "x/c", 80, 6, A), ("x/a", OUT, "z/c", 80, 6, A)]),
    ("policyTypes Ingress with no rules denies all ingress", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all}
spec: {podSelector: {}, policyTypes: [Ingress]}
""", Enforcement.DEFAULT, [("x/a", IN, "x/b", 80, 6, DD), ("x/a", OUT, "x/b", 80, 6, A), ("y/a", IN, "x/b", 80, 6, A)]),
    ("egress section implies policyTypes Egress; empty `to` allows everyone", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-53}
spec:
  podSelector: {}
  egress: [{ports: [{port: 53, protocol: UDP}]}]
""", Enforcement.DEFAULT, [("x/a", OUT, "world", 53, 17, A), ("x/a", OUT, "y/b", 53, 17, A),
                           ("x/a", OUT, "y/b", 53, 6, DD), ("x/a", IN, "y/b", 80, 6, DD)]),
    ("ingress: [{}] allows all ingress", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all}
spec: {podSelector: {}, ingress: [{}]}
""", Enforcement.DEFAULT, [("x/a", IN, "world", 9, 6, A), ("x/a", IN, "z/c", 81, 17, A)]),
    ("namespaceSelector alone, matchExpressions, and AND with podSelector", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ns-sel}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [y]}]}}]
    ports: [{port: 80}]
  - from: [{namespaceSelector: {matchLabels: {team: z}}, podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [c]}]}}]
    ports: [{port: 81}]
""", Enforcement.DEFAULT, [("x/a", IN, "y/c", 80, 6, A), ("x/a", IN, "z/a", 80, 6, DD), ("x/a", IN, "z/a", 81, 6, A),
                           ("x/a", IN, "z/c", 81, 6, DD), ("x/a", IN, "x/b", 80, 6, DD)]),
    ("kubernetes.io/metadata.name selects a namespace by name; Exists / DoesNotExist", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: by-ns-name}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: Exists}, {key: tier, operator: DoesNotExist}]}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: z}}}]}]
""", Enforcement.DEFAULT, [("x/b", IN, "z/b", 1234, 17, A), ("x/b", IN, "y/b", 1234, 17, DD)]),
    ("ipBlock with except, endPort range", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: cidr}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.128/25]}}], ports: [{port: 8000, endPort: 8080}]}]
  egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]}]
""", Enforcement.DEFAULT, [("x/a", IN, "198.51.100.10", 8042, 6, A), ("x/a", IN, "198.51.100.200", 8042, 6, DD),
                           ("x/a", IN, "198.51.100.10", 8081, 6, DD), ("x/a", OUT, "203.0.113.9", 443, 6, A),
                           ("x/a", OUT, "10.1.2.3", 443, 6, DD), ("x/a", OUT, "x/b", 80, 6, DD)]),
    ("CNP: fromEndpoints scoped to the namespace unless it names one; k8s: prefix", """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cnp}
spec:
  endpointSelector: {matchLabels: {k8s:pod: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {pod: b}}]
  - fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: y, pod: c}}]
    toPorts: [{ports: [{port: "81", protocol: ANY}]}]
""", Enforcement.DEFAULT, [("x/a", IN, "x/b", 5, 17, A), ("x/a", IN, "y/b", 5, 17, DD), ("x/a", IN, "y/c", 81, 17, A),
                           ("x/a", IN, "y/c", 81, 132, A), ("x/a", IN, "y/c", 80, 6, DD)]),
    ("CNP: an empty egress rule switches to default deny", """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: lockdown}
spec: {endpointSelector: {}, egress: [{}]}
""", Enforcement.DEFAULT, [("x/a", OUT, "x/b", 80, 6, DD), ("x/a", OUT, "world", 80, 6, DD), ("x/a", IN, "x/b", 80, 6, A)]),
    ("CNP entities: world, host, cluster, all", """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: entities}
specs:
- endpointSelector: {matchLabels: {pod: a}}
  egress: [{toEntities: [world]}, {toEntities: [host], toPorts: [{ports: [{port: "22"}]}]}]
- endpointSelector: {matchLabels: {pod: b}}
  ingress: [{fromEntities: [cluster]}]
  egress: [{toEntities: [all], toPorts: [{ports: [{port: "443", protocol: TCP}]}]}]
""", Enforcement.DEFAULT, [("x/a", OUT, "world", 80, 6, A), ("x/a", OUT, "198.51.100.7", 80, 6, A),
                           ("x/a", OUT, "host", 22, 6, A), ("x/a", OUT, "host", 80, 6, DD), ("x/a", OUT, "y/b", 80, 6, DD),
                           ("x/b", IN, "z/c", 80, 6, A), ("x/b", IN, "host", 80, 6, A), ("x/b", IN, "world", 80, 6, DD),
                           ("x/b", OUT, "world", 443, 6, A), ("x/b", OUT, "y/c", 443, 6, A), ("x/b", OUT, "y/c", 80, 6, DD)]),
    ("deny wins over allow, across policies and kinds (CCNP deny vs NetworkPolicy allow)", """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all}
spec: {podSelector: {}, ingress: [{}]}
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: deny-80-from-y}
spec:
  endpointSelector: {}
  ingressDeny: [{fromEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: y}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
""", Enforcement.DEFAULT, [("x/a", IN, "y/a", 80, 6, D), ("x/a", IN, "y/a", 81, 6, A), ("x/a", IN, "z/a", 80, 6, A),
                           ("z/c", IN, "y/b", 80, 6, D)]),
    ("deny with port range inside an allowed range; ICMP by type", """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ranges}
spec:
  endpointSelector: {matchLabels: {pod: c}}
  ingress:
  - fromEntities: [all]
    toPorts: [{ports: [{port: "1000", endPort: 2000, protocol: TCP}]}]
  - fromEntities: [all]
    icmps: [{fields: [{type: 8, family: IPv4}]}]
  ingressDeny:
  - fromEntities: [world]
    toPorts: [{ports: [{port: "1500", endPort: 1599, protocol: TCP}]}]
""", Enforcement.DEFAULT, [("x/c", IN, "world", 1000, 6, A), ("x/c", IN, "world", 2000, 6, A),
                           ("x/c", IN, "world", 1550, 6, D), ("x/c", IN, "y/a", 1550, 6, A),
                           ("x/c", IN, "world", 2001, 6, DD), ("x/c", IN, "world", 8, 1, A),
                           ("x/c", IN, "world", 13, 1, DD)]),
    ("deny-only policy also turns default deny on (Cilium: a direction with rules)", """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-only}
spec:
  endpointSelector: {matchLabels: {pod: a}}
  ingressDeny: [{fromEndpoints: [{matchLabels: {pod: b}}]}]
""", Enforcement.DEFAULT, [("x/a", IN, "x/b", 80, 6, D), ("x/a", IN, "x/c", 80, 6, DD)]),
    ("enableDefaultDeny false: deny rules apply, everything else passes", """
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: soft-deny}
spec:
  endpointSelector: {}
  enableDefaultDeny: {ingress: false}
  ingressDeny: [{fromEntities: [world]}]
""", Enforcement.DEFAULT, [("y/b", IN, "world", 80, 6, D), ("y/b", IN, "x/c", 80, 6, A)]),
    ("enforcement always: no policy means deny both ways", "", Enforcement.ALWAYS,
     [("x/a", IN, "x/b", 80, 6, DD), ("x/a", OUT, "x/b", 80, 6, DD)]),
    ("enforcement never: even deny rules are off", """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-only}
spec:
  endpointSelector: {}
  ingressDeny: [{fromEndpoints: [{}]}]
""", Enforcement.NEVER, [("x/a", IN, "x/b", 80, 6, A)]),
    ("union of policies: each adds allowed traffic", NP_ALLOW_B + """---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-c-81}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}], ports: [{port: 81}]}]
""", Enforcement.DEFAULT, [("x/a", IN, "x/b", 80, 6, A), ("x/a", IN, "x/c", 81, 6, A), ("x/a", IN, "x/c", 80, 6, DD)]),
]


@pytest.mark.parametrize("title,documents,enforcement,checks", CASES, ids=[c[0] for c in CASES])
def test_policy_semantics(title: str, documents: str, enforcement: Enforcement,
                          checks: list[tuple[str, Direction, str, int, int, Verdict]]) -> None:
    world = World(documents, enforcement)
    got = [(e, d.value, p, port, proto, world.verdict(e, d, p, port, proto).value)
           for e, d, p, port, proto, _ in checks]
    want = [(e, d.value, p, port, proto, v.value) for e, d, p, port, proto, v in checks]
    assert got == want


def test_named_ports_resolve_against_the_endpoints_own_pod_on_ingress() -> None:
    objects: Any = yaml.safe_load("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: http}]}]
""")
    rules = parse_policy(objects)
    policy = resolve_endpoint(rules, PODS["x/a"], own_named_ports={"http": {(6, 8080)}})
    peer = IdentityView(IDS["x/b"], PODS["x/b"])
    assert decide(policy.ingress, peer, 6, 8080).verdict is A
    assert decide(policy.ingress, peer, 6, 80).verdict is DD
    unresolved = resolve_endpoint(rules, PODS["x/a"], own_named_ports={})
    assert decide(unresolved.ingress, peer, 6, 8080).verdict is DD


def test_identity_classes_do_not_multiply_identities_by_ports() -> None:
    cidrs = "\n".join(f"    - 172.16.{i // 256}.{i % 256}/32" for i in range(2000))
    world = World(f"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: big}}
spec:
  endpointSelector: {{matchLabels: {{pod: a}}}}
  ingress:
  - fromCIDR:
{cidrs}
    toPorts: [{{ports: [{{port: "80"}}, {{port: "443"}}, {{port: "8000", endPort: 8999}}]}}]
""")
    policy = resolve_endpoint(world.repository.rules(), PODS["x/a"])
    state = compute_map_state(policy, world.index)
    # 2000 identities x (2 ports + a 1000-port range, 3 protocols each) would be ~60,000 entries per identity
    # class in Cilium's layout; here: one selector entry per identity plus one class's port prefixes.
    assert len(state.ingress.classes) == 2000
    assert len(state.ingress.ports) < 60
    assert world.verdict("x/a", IN, "172.16.3.7", 8500) is A
    assert world.verdict("x/a", IN, "172.16.3.7", 9000) is DD


def test_overflow_is_reported_not_silent() -> None:
    from cilia.policy.errors import PolicyMapOverflow

    world = World(CASES[7][1])
    policy = resolve_endpoint(world.repository.rules(), PODS["x/a"])
    with pytest.raises(PolicyMapOverflow, match="--policy-map-max-entries"):
        compute_map_state(policy, world.index, max_entries=2)


@pytest.mark.parametrize("low,high", [(0, 65535), (80, 80), (8000, 8080), (1, 65534), (1024, 2047)])
def test_port_ranges_become_exact_prefix_covers(low: int, high: int) -> None:
    covered: set[int] = set()
    for value, bits in range_prefixes(low, high):
        size = 1 << (16 - bits)
        assert value % size == 0
        covered.update(range(value, value + size))
    assert covered == set(range(low, high + 1))
