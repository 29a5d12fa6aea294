"""DNS rules and toFQDNs in policy: parsing, REDIRECT entries on the DNS port, the DNS proxy's
rules file, FQDN identities and what they match (cilia.policy.dns, cilia.identity.fqdn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cilia.fqdn.matchpattern import NameMatcher
from cilia.identity.cidr import CIDR_IDENTITY_BASE
from cilia.identity.fqdn import FQDN_IDENTITY_BASE, FqdnIdentities, fqdn_labels, read_sets
from cilia.identity.labels import LabelSet
from cilia.policy.cilium import parse_cilium_policy
from cilia.policy.errors import PolicyError
from cilia.policy.mapstate import PeerIndex, compute_map_state
from cilia.policy.resolve import resolve_endpoint
from cilia.policy.rules import Direction, EntityPeer, FqdnPeer, IdentityView
from cilia.proxy.dnspolicy import DnsPolicyStore, write_policy

POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules: {dns: [{matchPattern: "*.example.test"}]}
  - toFQDNs: [{matchName: api.example.test}, {matchPattern: "*.cdn.example.test"}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"""
LABELS = LabelSet.parse_many(["k8s:app=client", "k8s:io.kubernetes.pod.namespace=default"])
KUBE_DNS = IdentityView(400, LabelSet.parse_many(["k8s:k8s-app=kube-dns", "k8s:io.kubernetes.pod.namespace=kube-system"]))
API = IdentityView(FQDN_IDENTITY_BASE + 1, fqdn_labels(["matchName:api.example.test."]))
BOTH = IdentityView(FQDN_IDENTITY_BASE + 2, fqdn_labels(["matchName:api.example.test.", "matchName:other.test."]))
OTHER = IdentityView(FQDN_IDENTITY_BASE + 3, fqdn_labels(["matchName:other.test."]))


def _state() -> Any:
    rules = parse_cilium_policy(yaml.safe_load(POLICY))
    rules = [r.__class__(**{**r.__dict__, "egress": tuple(e.__class__(**{**e.__dict__, "rule_id": 20 + i})
                                                           for i, e in enumerate(r.egress))}) for r in rules]
    return compute_map_state(resolve_endpoint(rules, LABELS), PeerIndex([KUBE_DNS, API, BOTH, OTHER]))


def test_dns_port_is_redirected_for_udp_and_tcp_only() -> None:
    state = _state()
    for proto in (6, 17):
        decision = state.lookup(Direction.EGRESS, 400, proto, 53)
        assert decision.passes and decision.redirect
    sctp = state.lookup(Direction.EGRESS, 400, 132, 53)
    assert sctp.passes and not sctp.redirect
    assert not state.lookup(Direction.EGRESS, 401, 17, 53).passes


def test_fqdn_identities_are_allowed_through_any_of_their_selectors() -> None:
    state = _state()
    assert state.lookup(Direction.EGRESS, API.id, 6, 443).passes
    assert state.lookup(Direction.EGRESS, BOTH.id, 6, 443).passes
    assert not state.lookup(Direction.EGRESS, OTHER.id, 6, 443).passes
    assert not state.lookup(Direction.EGRESS, API.id, 6, 80).passes
    assert not state.lookup(Direction.EGRESS, API.id, 6, 443).redirect


def test_dns_rules_file_round_trip(tmp_path: Path) -> None:
    state = _state()
    write_policy(tmp_path, 7, state.dns)
    judged = DnsPolicyStore(tmp_path).get(7)
    assert judged.judge(400, 17, 53, "a.example.test.").allowed
    assert judged.judge(400, 6, 53, "a.example.test.").allowed
    assert not judged.judge(400, 17, 53, "a.b.example.test.").allowed
    assert not judged.judge(401, 17, 53, "a.example.test.").allowed  # not the DNS server
    assert not DnsPolicyStore(tmp_path).get(8).judge(400, 17, 53, "a.example.test.").allowed  # no file: refused
    (tmp_path / "9.json").write_text("{not json")
    assert not DnsPolicyStore(tmp_path).get(9).judge(400, 17, 53, "a.example.test.").allowed


def test_no_dns_rules_no_dns_entries() -> None:
    rules = parse_cilium_policy(yaml.safe_load(POLICY.replace('      rules: {dns: [{matchPattern: "*.example.test"}]}\n',
                                                             "")))
    state = compute_map_state(resolve_endpoint(rules, LABELS), PeerIndex([KUBE_DNS]))
    assert state.dns == () and not state.lookup(Direction.EGRESS, 400, 17, 53).redirect


@pytest.mark.parametrize(("change", "field", "reason"), [
    ({"toFQDNs": [{"matchName": "a b"}]}, "toFQDNs[0].matchName", "invalid characters"),
    ({"toFQDNs": [{"matchPattern": "a/*"}]}, "toFQDNs[0].matchPattern", "invalid characters"),
    ({"toFQDNs": [{"matchName": "a", "matchPattern": "b"}]}, "toFQDNs[0]", "exactly one"),
    ({"toFQDNs": [{"regex": "a"}]}, "toFQDNs[0].regex", "unknown field"),
    ({"toFQDNs": []}, "toFQDNs", "at least one"),
    ({"toFQDNs": [{"matchName": 5}]}, "toFQDNs[0].matchName", "must be a string"),
    ({"toPorts": [{"ports": [{"port": "53"}], "rules": {"dns": [{"matchPattern": "x y"}]}}]},
     "rules.dns[0].matchPattern", "invalid characters"),
    ({"toPorts": [{"ports": [{"port": "53"}], "rules": {"dns": []}}]}, "rules.dns", "at least one"),
    ({"toPorts": [{"ports": [{"port": "dns"}], "rules": {"dns": [{"matchName": "a"}]}}]}, "ports[0]",
     "numbered port"),
    ({"toPorts": [{"ports": [{"port": "53"}], "rules": {"dns": [{"matchName": "a"}], "http": [{}]}}]},
     "rules", "one L7 protocol per port"),
])
def test_bad_fqdn_input_names_field_and_reason(change: dict[str, Any], field: str, reason: str) -> None:
    obj = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "p", "namespace": "x"},
           "spec": {"endpointSelector": {}, "egress": [change]}}
    with pytest.raises(PolicyError) as info:
        parse_cilium_policy(obj)
    assert "x/p" in str(info.value) and field in str(info.value) and reason in str(info.value), str(info.value)


def test_to_fqdns_in_deny_rules_is_rejected() -> None:
    obj = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "p", "namespace": "x"},
           "spec": {"endpointSelector": {}, "egressDeny": [{"toFQDNs": [{"matchName": "a.test"}]}]}}
    with pytest.raises(PolicyError, match="deny"):
        parse_cilium_policy(obj)


def test_fqdn_peer_and_world_entity() -> None:
    peer = FqdnPeer(NameMatcher("matchName", "api.example.test"))
    assert peer.matches(API) and peer.matches(BOTH) and not peer.matches(OTHER)
    assert not peer.matches(IdentityView(CIDR_IDENTITY_BASE + 1, API.labels))  # only FQDN identities
    assert EntityPeer("world").matches(API)


def test_fqdn_identities_persist_and_allocate_sets(tmp_path: Path) -> None:
    path = tmp_path / "ids.json"
    ids = FqdnIdentities(path)
    current, released = ids.sync(["matchName:a.", "matchName:b."])
    assert len(current) == 2 and not released and all(n > FQDN_IDENTITY_BASE for n in current.values())
    both = ids.request(["matchName:a.", "matchName:b."])
    assert both is not None and both not in current.values()
    assert ids.request(["matchName:a.", "matchName:zzz."]) is None  # unknown selector
    assert FqdnIdentities(path).current() == ids.current() == read_sets(path)
    _current, released = ids.sync(["matchName:a."])
    assert set(released) == {frozenset({"matchName:b."}), frozenset({"matchName:a.", "matchName:b."})}


def test_sets_one_name_can_match_are_allocated_with_the_policy(tmp_path: Path) -> None:
    ids = FqdnIdentities(tmp_path / "ids.json")
    name, pattern, cdn = "matchName:api.example.test.", "matchPattern:*.example.test.", "matchPattern:*.cdn.test."
    current, _released = ids.sync([name, pattern, cdn])
    assert frozenset({name, pattern}) in current  # api.example.test matches both: ready before any answer
    assert frozenset({name, cdn}) not in current and frozenset({pattern, cdn}) not in current
    assert len(current) == 4 and read_sets(tmp_path / "ids.json") == current
    _current, released = ids.sync([name, cdn])
    assert frozenset({name, pattern}) in released
