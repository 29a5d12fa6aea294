"""cilium.io/v2 CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy -> Rules, with Cilium's semantics.

- `spec` or `specs` (a list of rules), each with an endpointSelector.
- A CNP's selectors are scoped to its namespace unless they name `io.kubernetes.pod.namespace`;
  a CCNP's are cluster-wide.
- A direction with rules (allow or deny) turns default deny on for it, unless
  `enableDefaultDeny` says false. `ingress: [{}]` therefore allows nothing and isolates the pod.
- A rule with only toPorts / icmps applies to every peer; deny beats allow everywhere.
- toServices (egress and egressDeny): `k8sService` (serviceName, namespace) or
  `k8sServiceSelector` (selector on the Service's labels, namespace); the namespace defaults to
  the policy's in a CNP and to every namespace in a CCNP. Resolved to the services' backends
  (cilia.policy.addresses).
- `toPorts[].rules.http` (ingress and egress allow rules on numbered TCP ports): the port's
  connections are redirected to the node's L7 proxy, which lets through only requests some rule
  matches (cilia.policy.l7).
- `toPorts[].rules.dns` (egress, numbered UDP/TCP ports): the port's DNS queries go to the node's
  DNS proxy, which forwards only names some matcher allows (cilia.policy.dns).
- `toFQDNs` (egress): the FQDN identities of its selectors (cilia.identity.fqdn), filled by the
  DNS proxy from allowed answers.
- Other L7 rules and the other features not built yet are rejected by name.
"""

from __future__ import annotations

import re
from typing import Any

from cilia.fqdn.matchpattern import NameMatcher
from cilia.identity.labels import NAMESPACE_LABEL
from cilia.policy.common import (
    Fail,
    failer,
    parse_cidr_with_excepts,
    parse_network,
    parse_port,
    parse_protocol,
)
from cilia.policy.dns import parse_dns_rules, parse_matchers
from cilia.policy.l7 import HttpRule, parse_l7_rules
from cilia.policy.rules import (
    ALL,
    ENTITIES,
    ICMP,
    ICMPV6,
    SCTP,
    CidrPeer,
    EntityPeer,
    Entry,
    FqdnPeer,
    NamedPort,
    Peer,
    PolicyRef,
    PortRange,
    Rule,
    SelectorPeer,
    ServicePeer,
)
from cilia.policy.selector import Selector, equals, parse_selector
from cilia.resources.fields import as_list, check_fields, is_number, object_name
from cilia.resources.validate import DNS1123_LABEL

CNP = "CiliumNetworkPolicy"
CCNP = "CiliumClusterwideNetworkPolicy"
API_VERSION = "cilium.io/v2"

_LATER = {
    "fromRequires": "fromRequires is deprecated in Cilium and not implemented",
    "toRequires": "toRequires is deprecated in Cilium and not implemented",
    "fromGroups": "fromGroups (cloud provider groups) is not available here",
    "toGroups": "toGroups (cloud provider groups) is not available here",
    "fromNodes": "fromNodes needs node identities (multi-node)",
    "toNodes": "toNodes needs node identities (multi-node)",
    "authentication": "mutual authentication is not implemented",
    "nodeSelector": "host policies (nodeSelector) are not implemented",
    "terminatingTLS": "TLS interception needs the L7 proxy",
    "originatingTLS": "TLS interception needs the L7 proxy",
    "serverNames": "serverNames (TLS SNI) needs the L7 proxy",
    "listener": "Envoy listeners need the L7 proxy",
    "cidrGroupRef": "CiliumCIDRGroup references are not implemented",
}
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?\Z")
_RULE_FIELDS = {"endpointSelector", "ingress", "ingressDeny", "egress", "egressDeny", "labels", "description",
                "enableDefaultDeny"}
_PEER_FIELDS = {
    "ingress": ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities"),
    "egress": ("toEndpoints", "toCIDR", "toCIDRSet", "toEntities"),
}
_ICMP_TYPES_V4 = {"EchoReply": 0, "DestinationUnreachable": 3, "Redirect": 5, "Echo": 8, "EchoRequest": 8,
                  "TimeExceeded": 11, "ParameterProblem": 12, "Timestamp": 13, "TimestampReply": 14}
_ICMP_TYPES_V6 = {"DestinationUnreachable": 1, "PacketTooBig": 2, "TimeExceeded": 3, "ParameterProblem": 4,
                  "EchoRequest": 128, "EchoReply": 129, "MulticastListenerQuery": 130,
                  "NeighborSolicitation": 135, "NeighborAdvertisement": 136}


def parse_cilium_policy(obj: dict[str, Any]) -> list[Rule]:
    fail = failer(obj)
    kind = obj.get("kind")
    if kind not in (CNP, CCNP):
        raise fail("kind", f"must be {CNP} or {CCNP}")
    namespace, name = object_name(obj, fail, namespaced=kind == CNP)
    ref = PolicyRef(kind, namespace, name)
    has_spec, has_specs = obj.get("spec") is not None, obj.get("specs") is not None
    if not has_spec and not has_specs:
        raise fail("spec", "a policy needs `spec` or `specs`")
    raws: list[tuple[str, Any]] = []
    if has_spec:
        raws.append(("spec", obj["spec"]))
    if has_specs:
        raws += [(f"specs[{i}]", raw) for i, raw in enumerate(as_list(obj["specs"], "specs", fail))]
    return [_rule(raw, where, ref, namespace, index, fail) for index, (where, raw) in enumerate(raws)]


def _rule(raw: Any, where: str, ref: PolicyRef, namespace: str, index: int, fail: Fail) -> Rule:
    check_fields(raw, _RULE_FIELDS, where, fail, unsupported=_LATER)
    if "endpointSelector" not in raw:
        raise fail(f"{where}.endpointSelector", "is required")
    subject = parse_selector(raw["endpointSelector"], f"{where}.endpointSelector", fail)
    if namespace:
        subject = subject.with_requirements([equals(NAMESPACE_LABEL, namespace)])
    default_deny = check_fields(raw.get("enableDefaultDeny") or {}, {"ingress", "egress"},
                                f"{where}.enableDefaultDeny", fail)
    for key, value in default_deny.items():
        if not isinstance(value, bool):
            raise fail(f"{where}.enableDefaultDeny.{key}", "must be true or false")
    entries: dict[str, list[Entry]] = {"ingress": [], "egress": []}
    for direction in ("ingress", "egress"):
        for field, deny in ((direction, False), (f"{direction}Deny", True)):
            for i, entry_raw in enumerate(as_list(raw.get(field), f"{where}.{field}", fail)):
                entries[direction].append(
                    _entry(entry_raw, f"{where}.{field}[{i}]", direction, deny, namespace, i, fail))
    enables = {d: bool(entries[d]) and default_deny.get(d, True) for d in ("ingress", "egress")}
    return Rule(ref, subject, tuple(entries["ingress"]), tuple(entries["egress"]),
                enables_ingress=enables["ingress"], enables_egress=enables["egress"], spec_index=index)


def _entry(raw: Any, where: str, direction: str, deny: bool, namespace: str, index: int, fail: Fail) -> Entry:
    endpoints_f, cidr_f, cidrset_f, entities_f = _PEER_FIELDS[direction]
    allowed = {endpoints_f, cidr_f, cidrset_f, entities_f, "toPorts", "icmps"}
    if direction == "egress":
        allowed |= {"toServices", "toFQDNs"}
    elif isinstance(raw, dict) and "toServices" in raw:
        raise fail(f"{where}.toServices", "toServices is an egress peer (egress or egressDeny only)")
    check_fields(raw, allowed, where, fail, unsupported=_LATER)
    peers: list[Peer] = []
    for i, selector_raw in enumerate(as_list(raw.get(endpoints_f), f"{where}.{endpoints_f}", fail)):
        selector = parse_selector(selector_raw, f"{where}.{endpoints_f}[{i}]", fail)
        peers.append(SelectorPeer(_scoped(selector, namespace)))
    for i, text in enumerate(as_list(raw.get(cidr_f), f"{where}.{cidr_f}", fail)):
        peers.append(CidrPeer(parse_network(text, f"{where}.{cidr_f}[{i}]", fail)))
    for i, item in enumerate(as_list(raw.get(cidrset_f), f"{where}.{cidrset_f}", fail)):
        at = f"{where}.{cidrset_f}[{i}]"
        check_fields(item, {"cidr", "except"}, at, fail, unsupported=_LATER)
        peers.append(CidrPeer(*parse_cidr_with_excepts(item.get("cidr"), item.get("except"), at, "except", fail)))
    for i, entity in enumerate(as_list(raw.get(entities_f), f"{where}.{entities_f}", fail)):
        if not isinstance(entity, str) or entity not in ENTITIES:
            raise fail(f"{where}.{entities_f}[{i}]", f"unknown entity {entity!r} (known: {', '.join(ENTITIES)})")
        peers.append(EntityPeer(entity))
    for i, item in enumerate(as_list(raw.get("toServices"), f"{where}.toServices", fail)):
        peers.append(_service_peer(item, f"{where}.toServices[{i}]", namespace, fail))
    if "toFQDNs" in raw:
        if deny:
            raise fail(f"{where}.toFQDNs", "toFQDNs is not allowed in deny rules (as in Cilium)")
        peers += [FqdnPeer(m) for m in parse_matchers(raw["toFQDNs"], f"{where}.toFQDNs", fail)]
    ports, named, l7, dns = _to_ports(raw.get("toPorts"), f"{where}.toPorts", direction, deny, fail)
    ports += _icmps(raw.get("icmps"), f"{where}.icmps", fail)
    has_l4 = "toPorts" in raw or "icmps" in raw
    if not peers and has_l4:
        peers = [ALL]  # an L4-only rule applies to every peer
    return Entry(tuple(peers), tuple(ports) if has_l4 else (PortRange(0),), tuple(named), deny=deny, index=index,
                 l7=tuple(l7), dns=tuple(dns))


def _service_peer(raw: Any, where: str, namespace: str, fail: Fail) -> ServicePeer:
    check_fields(raw, {"k8sService", "k8sServiceSelector"}, where, fail)
    if len(raw) != 1:
        raise fail(where, "needs exactly one of k8sService or k8sServiceSelector")
    if "k8sService" in raw:
        at = f"{where}.k8sService"
        item = check_fields(raw["k8sService"], {"serviceName", "namespace"}, at, fail)
        name = item.get("serviceName")
        if name is None or name == "":
            raise fail(f"{at}.serviceName", "is required")
        if not isinstance(name, str) or len(name) > 63 or not _DNS1035_LABEL.match(name):
            raise fail(f"{at}.serviceName", f"{name!r} is not a valid Service name (a DNS-1035 label)")
        return ServicePeer(_service_namespace(item.get("namespace"), f"{at}.namespace", namespace, fail), name)
    at = f"{where}.k8sServiceSelector"
    item = check_fields(raw["k8sServiceSelector"], {"selector", "namespace"}, at, fail)
    if "selector" not in item:
        raise fail(f"{at}.selector", "is required (a label selector on the Service's labels)")
    selector = parse_selector(item["selector"], f"{at}.selector", fail)
    return ServicePeer(_service_namespace(item.get("namespace"), f"{at}.namespace", namespace, fail),
                       selector=selector)


def _service_namespace(raw: Any, where: str, policy_namespace: str, fail: Fail) -> str:
    """Absent: the policy's namespace in a CNP, every namespace ("") in a CCNP."""
    if raw is None or raw == "":
        return policy_namespace
    if not isinstance(raw, str) or len(raw) > 63 or not DNS1123_LABEL.match(raw):
        raise fail(where, f"{raw!r} is not a valid namespace name (a DNS-1123 label)")
    return raw


def _scoped(selector: Selector, namespace: str) -> Selector:
    if not namespace or selector.names_key(NAMESPACE_LABEL):
        return selector
    return selector.with_requirements([equals(NAMESPACE_LABEL, namespace)])


L7Ports = list[tuple[PortRange, tuple[HttpRule, ...]]]


DnsPorts = list[tuple[PortRange, tuple[NameMatcher, ...]]]


def _to_ports(raw: Any, where: str, direction: str, deny: bool, fail: Fail,
              ) -> tuple[list[PortRange], list[NamedPort], L7Ports, DnsPorts]:
    ports: list[PortRange] = []
    named: list[NamedPort] = []
    l7: L7Ports = []
    dns_ports: DnsPorts = []
    for i, item in enumerate(as_list(raw, where, fail)):
        at = f"{where}[{i}]"
        check_fields(item, {"ports", "rules"}, at, fail, unsupported=_LATER)
        http: tuple[HttpRule, ...] = ()
        dns: tuple[NameMatcher, ...] = ()
        if isinstance(item, dict) and isinstance(item.get("rules"), dict) and "dns" in item["rules"]:
            if deny:
                raise fail(f"{at}.rules", "L7 rules are not allowed in deny rules (as in Cilium)")
            dns = parse_dns_rules(item["rules"], f"{at}.rules", direction, fail)
        elif item.get("rules") is not None:
            if deny:
                raise fail(f"{at}.rules", "L7 rules are not allowed in deny rules (as in Cilium)")
            http = parse_l7_rules(item["rules"], f"{at}.rules", fail)
        port_list = as_list(item.get("ports"), f"{at}.ports", fail)
        if not port_list:
            raise fail(f"{at}.ports", "needs at least one port")
        for j, port in enumerate(port_list):
            pat = f"{at}.ports[{j}]"
            check_fields(port, {"port", "endPort", "protocol"}, pat, fail)
            protocol = parse_protocol(port.get("protocol", "ANY"), f"{pat}.protocol", fail,
                                      ("TCP", "UDP", "SCTP", "ANY"))
            numbered, by_name = parse_port(port.get("port"), port.get("endPort"), protocol, pat, fail)
            if http and (protocol != "TCP" or by_name or not numbered or any(p.all_ports for p in numbered)):
                raise fail(pat, "not supported yet: L7 rules need a numbered TCP port (protocol: TCP)")
            if dns and (protocol not in ("TCP", "UDP", "ANY") or by_name or not numbered
                        or any(p.all_ports for p in numbered)):
                raise fail(pat, "DNS rules need a numbered port with protocol UDP, TCP or ANY")
            ports += numbered
            named += by_name
            l7 += [(p, http) for p in numbered if http]
            dns_ports += [(p, dns) for p in numbered if dns and p.protocol != SCTP]
    return ports, named, l7, dns_ports


def _icmps(raw: Any, where: str, fail: Fail) -> list[PortRange]:
    ports: list[PortRange] = []
    for i, item in enumerate(as_list(raw, where, fail)):
        at = f"{where}[{i}]"
        check_fields(item, {"fields"}, at, fail)
        for j, field in enumerate(as_list(item.get("fields"), f"{at}.fields", fail)):
            fat = f"{at}.fields[{j}]"
            check_fields(field, {"type", "family"}, fat, fail)
            family = field.get("family", "IPv4")
            if family not in ("IPv4", "IPv6"):
                raise fail(f"{fat}.family", f"{family!r} is not IPv4 or IPv6")
            names = _ICMP_TYPES_V4 if family == "IPv4" else _ICMP_TYPES_V6
            value = field.get("type")
            if isinstance(value, str) and not is_number(value):
                if value not in names:
                    raise fail(f"{fat}.type", f"unknown {family} ICMP type {value!r} (known: {', '.join(names)})")
                number = names[value]
            elif isinstance(value, (int, str)) and not isinstance(value, bool) and 0 <= int(value) <= 255:
                number = int(value)
            else:
                raise fail(f"{fat}.type", "must be an ICMP type 0-255 or its name")
            ports.append(PortRange(ICMP if family == "IPv4" else ICMPV6, number, number))
    return ports
