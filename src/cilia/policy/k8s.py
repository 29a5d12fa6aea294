"""networking.k8s.io/v1 NetworkPolicy -> Rules, with the Kubernetes semantics.

- podSelector selects pods of the policy's namespace; `{}` selects all of them.
- policyTypes defaults to Ingress, plus Egress when the policy has egress rules. A type listed
  makes the selected pods isolated for that direction, even with no rules (deny all).
- A rule with no `from`/`to` allows every source/destination (including outside the cluster);
  no `ports` allows every port. Peers are ORed; a peer with podSelector and namespaceSelector
  ANDs them; a namespaceSelector alone selects pods of the matching namespaces.
- ipBlock (with except) matches the addresses it covers, outside the cluster and, as Kubernetes
  says, the pods whose IPs fall inside it (cilia.policy.addresses; Cilium's CIDR rules do not).
"""

from __future__ import annotations

from typing import Any

from cilia.identity.labels import NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX
from cilia.policy.common import Fail, failer, parse_cidr_with_excepts, parse_port, parse_protocol
from cilia.policy.rules import ALL, CidrPeer, Entry, NamedPort, Peer, PolicyRef, PortRange, Rule, SelectorPeer
from cilia.policy.selector import Requirement, equals, parse_selector, split_key
from cilia.resources.fields import as_list, check_fields, object_name

KIND = "NetworkPolicy"
API_VERSION = "networking.k8s.io/v1"
_NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def _namespace_key(key: str, operator: str, values: tuple[str, ...]) -> Requirement:
    """A namespace label becomes the pod identity label that carries it."""
    _source, name = split_key(key)
    if name == _NAMESPACE_NAME_LABEL:  # set by Kubernetes on every namespace: its name
        return Requirement("k8s", NAMESPACE_LABEL, operator, tuple(sorted(values)))
    return Requirement("k8s", NAMESPACE_LABELS_PREFIX + name, operator, tuple(sorted(values)))


def _pod_key(key: str, operator: str, values: tuple[str, ...]) -> Requirement:
    _source, name = split_key(key)
    return Requirement("k8s", name, operator, tuple(sorted(values)))


def parse_network_policy(obj: dict[str, Any]) -> list[Rule]:
    fail = failer(obj)
    namespace, name = object_name(obj, fail, namespaced=True)
    ref = PolicyRef(KIND, namespace, name)
    spec = check_fields(obj.get("spec"), {"podSelector", "ingress", "egress", "policyTypes"}, "spec", fail)
    in_namespace = equals(NAMESPACE_LABEL, namespace)
    if "podSelector" not in spec:
        raise fail("spec.podSelector", "is required (use {} to select every pod in the namespace)")
    subject = parse_selector(spec["podSelector"], "spec.podSelector", fail, key_map=_pod_key)
    subject = subject.with_requirements([in_namespace])
    ingress_raw = as_list(spec.get("ingress"), "spec.ingress", fail)
    egress_raw = as_list(spec.get("egress"), "spec.egress", fail)
    types_raw = spec.get("policyTypes")
    if types_raw is None:
        types = {"Ingress"} | ({"Egress"} if egress_raw else set())
    else:
        types = set()
        for index, value in enumerate(as_list(types_raw, "spec.policyTypes", fail)):
            if value not in ("Ingress", "Egress"):
                raise fail(f"spec.policyTypes[{index}]", f"{value!r} is not Ingress or Egress")
            types.add(value)
    ingress = tuple(_entry(raw, f"spec.ingress[{i}]", "from", namespace, i, fail) for i, raw in enumerate(ingress_raw))
    egress = tuple(_entry(raw, f"spec.egress[{i}]", "to", namespace, i, fail) for i, raw in enumerate(egress_raw))
    # Rules of a direction the policy does not claim are ignored, as Kubernetes does.
    return [Rule(ref, subject,
                 ingress=ingress if "Ingress" in types else (),
                 egress=egress if "Egress" in types else (),
                 enables_ingress="Ingress" in types, enables_egress="Egress" in types)]


def _entry(raw: Any, where: str, peers_field: str, namespace: str, index: int, fail: Fail) -> Entry:
    check_fields(raw, {peers_field, "ports"}, where, fail)
    peers_raw = raw.get(peers_field)
    peers: list[Peer] = []
    if peers_raw is None or peers_raw == []:
        peers = [ALL]
    for pi, peer in enumerate(as_list(peers_raw, f"{where}.{peers_field}", fail)):
        peers.append(_peer(peer, f"{where}.{peers_field}[{pi}]", namespace, fail))
    ports: list[PortRange] = []
    named: list[NamedPort] = []
    for pi, port in enumerate(as_list(raw.get("ports"), f"{where}.ports", fail)):
        at = f"{where}.ports[{pi}]"
        check_fields(port, {"port", "endPort", "protocol"}, at, fail)
        protocol = parse_protocol(port.get("protocol"), f"{at}.protocol", fail, ("TCP", "UDP", "SCTP"))
        numbered, by_name = parse_port(port.get("port"), port.get("endPort"), protocol, at, fail)
        ports += numbered
        named += by_name
    if not raw.get("ports"):
        ports = [PortRange(0)]
    return Entry(tuple(peers), tuple(ports), tuple(named), index=index)


def _peer(raw: Any, where: str, namespace: str, fail: Fail) -> Peer:
    check_fields(raw, {"podSelector", "namespaceSelector", "ipBlock"}, where, fail)
    if not raw:
        raise fail(where, "a peer needs podSelector, namespaceSelector or ipBlock")
    if "ipBlock" in raw:
        if len(raw) > 1:
            raise fail(f"{where}.ipBlock", "cannot be combined with podSelector or namespaceSelector")
        block = check_fields(raw["ipBlock"], {"cidr", "except"}, f"{where}.ipBlock", fail)
        network, excepts = parse_cidr_with_excepts(block.get("cidr"), block.get("except"), f"{where}.ipBlock",
                                                   "except", fail)
        return CidrPeer(network, excepts, selects_pods=True)
    pods = parse_selector(raw.get("podSelector"), f"{where}.podSelector", fail, key_map=_pod_key)
    if "namespaceSelector" in raw:
        namespaces = parse_selector(raw["namespaceSelector"], f"{where}.namespaceSelector", fail,
                                    key_map=_namespace_key)
        return SelectorPeer(pods.with_requirements(namespaces.requirements))
    return SelectorPeer(pods.with_requirements([equals(NAMESPACE_LABEL, namespace)]))
