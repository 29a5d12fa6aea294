"""Address-based peers -> the identities they select, per policy revision (pure: no store, no kernel).

Two peers select by address, not by labels:

- a NetworkPolicy ipBlock (`CidrPeer(selects_pods=True)`): Kubernetes says it covers pod IPs too.
  Policy is enforced per identity, and pods with the same labels share one, so a pod identity is
  selected when every IP of the block's family the node knows for it (local endpoints and, in a
  cluster, the remote endpoints of the cluster ipcache) is inside the block and outside its
  excepts. An identity whose pods straddle the block is not selected (the pods inside are then
  not reached through the block: identity-based enforcement cannot split them). A dual-stack
  pod selected by an IPv4 block is reached on its IPv6 address too (same identity).
- a Cilium toServices entry (`ServicePeer`): for each selected Service with a selector, the pod
  identities whose labels match it in the service's namespace (Cilium translates such a rule into
  an endpoint selector, so this follows pods as they come and go); for each endpoint address of
  the service's EndpointSlices, the identity of the pod with that IP or, for an address that is
  no pod (a selector-less service to something outside), a /32 (/128) CIDR identity.

The result goes into `IdentityView.address_peers`; the engine diffs views between revisions, so
only endpoints whose rules' selection changed are regenerated.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cilia.identity.labels import NAMESPACE_LABEL, LabelSet
from cilia.policy.rules import AddressPeer, CidrPeer, Direction, IdentityView, Network, Rule, ServicePeer
from cilia.policy.selector import Requirement, Selector, equals

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class ServiceFacts:
    """What toServices needs of one Service: its labels, its pod selector (None: selector-less)
    and the addresses of its EndpointSlices' endpoints that serve (ready or terminating-serving),
    with whether each one is a Pod (targetRef)."""

    namespace: str
    name: str
    labels: LabelSet
    selector: Mapping[str, str] | None = None
    endpoints: tuple[tuple[IPAddress, bool], ...] = ()


@dataclass(frozen=True)
class AddressSelection:
    """Per pod identity, the address peers selecting it; the CIDR prefixes the service peers need."""

    pods: dict[int, frozenset[AddressPeer]] = field(default_factory=dict)
    service_prefixes: dict[Network, frozenset[ServicePeer]] = field(default_factory=dict)


def address_peers(rules: Iterable[Rule]) -> set[AddressPeer]:
    found: set[AddressPeer] = set()
    for rule in rules:
        for direction in Direction:
            for entry in rule.entries(direction):
                for peer in entry.peers:
                    if isinstance(peer, ServicePeer) or (isinstance(peer, CidrPeer) and peer.selects_pods):
                        found.add(peer)
    return found


def service_selector(facts: ServiceFacts) -> Selector:
    """A Service's pod selector as an identity selector: its labels (k8s source) in its namespace."""
    assert facts.selector is not None
    return Selector(tuple(sorted({Requirement("k8s", k, "In", (v,)) for k, v in facts.selector.items()}
                                 | {equals(NAMESPACE_LABEL, facts.namespace)})))


def select(peers: Iterable[AddressPeer], identities: Iterable[IdentityView],
           pod_addresses: Mapping[int, Iterable[IPAddress]], services: Iterable[ServiceFacts],
           non_pod: Iterable[Network] = ()) -> AddressSelection:
    """`pod_addresses`: every pod identity's known IPs; `non_pod`: prefixes that hold pods only
    (pod CIDRs): an endpoint address there that is no known pod gets no CIDR identity (its pod's
    identity reaches the ipcache from the cluster sync, which a CIDR entry would shadow)."""
    blocks = [p for p in peers if isinstance(p, CidrPeer)]
    service_peers = [p for p in peers if isinstance(p, ServicePeer)]
    pods: dict[int, set[AddressPeer]] = {}
    for identity, raw in pod_addresses.items():
        addresses = list(raw)
        if not addresses:
            continue
        for block in blocks:
            family = [a for a in addresses if a.version == block.network.version]
            if family and all(block.contains(a) for a in family):
                pods.setdefault(identity, set()).add(block)
    prefixes: dict[Network, set[ServicePeer]] = {}
    if service_peers:
        by_ip = {a: identity for identity, raw in pod_addresses.items() for a in raw}
        pod_views = [v for v in identities if v.is_pod]
        pod_ranges = list(non_pod)
        for facts in services:
            chosen = [p for p in service_peers if p.selects_service(facts.namespace, facts.name, facts.labels)]
            if not chosen:
                continue
            if facts.selector:  # {} or None select no pods (Kubernetes: no selector)
                selector = service_selector(facts)
                for view in pod_views:
                    if selector.matches(view.labels):
                        pods.setdefault(view.id, set()).update(chosen)
            for address, is_pod in facts.endpoints:
                owner = by_ip.get(address)
                if owner is not None:
                    pods.setdefault(owner, set()).update(chosen)
                elif not is_pod and not any(address in r for r in pod_ranges if r.version == address.version):
                    prefixes.setdefault(ipaddress.ip_network(address), set()).update(chosen)
    return AddressSelection({i: frozenset(s) for i, s in pods.items()},
                            {p: frozenset(s) for p, s in prefixes.items()})
