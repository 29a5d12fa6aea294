"""Mutation fuzz of the policy parsers (policy/k8s.py, policy/cilium.py and the shared readers in
policy/common.py, policy/selector.py), called directly: only PolicyError, naming object and field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from mutation import FUZZ, crashes_of_single_edits, fuzz_parser, mutated, only_raises, values

from cilia.policy import cilium, k8s
from cilia.policy.common import failer, parse_cidr_with_excepts, parse_network, parse_port, parse_protocol
from cilia.policy.errors import PolicyError
from cilia.policy.selector import parse_selector
from cilia.policy.services import service_facts

ROOT = Path(__file__).resolve().parents[2]
SEEDS = [d for path in (ROOT / "tests/unit/fuzz_seeds/resources.yaml", ROOT / "examples/policy-web.yaml")
         for d in yaml.safe_load_all(path.read_text())]
PARSERS = {"NetworkPolicy": k8s.parse_network_policy, "CiliumNetworkPolicy": cilium.parse_cilium_policy,
           "CiliumClusterwideNetworkPolicy": cilium.parse_cilium_policy}
OBJ = {"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "x"}}
FIELD = "spec.ingress[0].ports[0]"


def checker(kind: str) -> Callable[[Any], None]:
    return only_raises(PARSERS[kind], PolicyError)


def seeds_of(kind: str) -> list[Any]:
    return [s for s in SEEDS if s["kind"] == kind]


@pytest.mark.parametrize("kind", sorted(PARSERS))
def test_policy_parser_fails_only_with_policy_error(kind: str) -> None:
    fuzz_parser(seeds_of(kind), checker(kind))


@pytest.mark.parametrize("kind", sorted(PARSERS))
def test_policy_parser_every_single_edit(kind: str) -> None:
    assert crashes_of_single_edits(seeds_of(kind), checker(kind)) == []


def _expect_policy_error(call: Any) -> None:
    try:
        call()
    except PolicyError as exc:
        message = str(exc)
        assert message.startswith("NetworkPolicy x/p: field 'spec.ingress[0].ports[0]"), message


@FUZZ
@given(values(), values(), st.sampled_from(["TCP", "UDP", "SCTP", "ANY"]))
def test_parse_port_fails_only_with_policy_error(port: Any, end_port: Any, protocol: str) -> None:
    _expect_policy_error(lambda: parse_port(port, end_port, protocol, FIELD, failer(OBJ)))


@FUZZ
@given(values(), values())
def test_cidr_readers_fail_only_with_policy_error(cidr: Any, excepts: Any) -> None:
    _expect_policy_error(lambda: parse_network(cidr, FIELD, failer(OBJ)))
    _expect_policy_error(lambda: parse_cidr_with_excepts(cidr, excepts, FIELD, "except", failer(OBJ)))
    _expect_policy_error(lambda: parse_protocol(cidr, FIELD, failer(OBJ), ("TCP", "UDP")))


@FUZZ
@given(mutated([{"matchLabels": {"app": "web", "k8s:io.kubernetes.pod.namespace": "a"},
                 "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                      {"key": "x", "operator": "DoesNotExist"}]}]))
def test_selector_fails_only_with_policy_error(raw: Any) -> None:
    _expect_policy_error(lambda: parse_selector(raw, FIELD, failer(OBJ)))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        # crashes the fuzz found, before the fix
        (lambda: parse_port("²", None, "TCP", FIELD, failer(OBJ)), "'²' is neither a port number"),
        (lambda: parse_port("80", "²", "TCP", FIELD, failer(OBJ)), "endPort': must be a number"),
        (lambda: cilium.parse_cilium_policy({"kind": "CiliumNetworkPolicy", "spec": {}}),
         "CiliumNetworkPolicy ?: field 'metadata': is required"),
        (lambda: k8s.parse_network_policy({"kind": "NetworkPolicy", "metadata": {"name": 5}}),
         "field 'metadata.name'"),
    ],
)
def test_found_crashes_are_policy_errors(call: Any, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        call()
    assert message in str(info.value)


SERVICE_PEERS = [{"k8sService": {"serviceName": "web", "namespace": "team-a"}},
                 {"k8sServiceSelector": {"selector": {"matchLabels": {"tier": "front"},
                                                      "matchExpressions": [{"key": "env", "operator": "NotIn",
                                                                            "values": ["dev"]}]},
                                         "namespace": "default"}}]


@FUZZ
@given(mutated(SERVICE_PEERS), st.sampled_from(["CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"]),
       st.sampled_from(["egress", "egressDeny", "ingress"]))
def test_to_services_fails_only_with_policy_error(peer: Any, kind: str, section: str) -> None:
    """toServices entries (and the list itself) mutated: parsed into a ServicePeer or rejected with
    a PolicyError naming the object and a field under the entry."""
    metadata: dict[str, Any] = {"name": "p", **({"namespace": "x"} if kind == "CiliumNetworkPolicy" else {})}
    obj = {"apiVersion": "cilium.io/v2", "kind": kind, "metadata": metadata,
           "spec": {"endpointSelector": {}, section: [{"toServices": peer if not isinstance(peer, dict) else [peer]}]}}
    try:
        cilium.parse_cilium_policy(obj)
    except PolicyError as exc:
        # the path is quoted like repr: double quotes when a mutated key holds a single quote
        assert f"spec.{section}[0].toServices" in str(exc) and "field " in str(exc), str(exc)
        return
    assert section != "ingress"


def test_to_services_every_single_edit() -> None:
    objects = [{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                "metadata": {"name": "p", "namespace": "x"},
                "spec": {"endpointSelector": {}, "egress": [{"toServices": SERVICE_PEERS}]}}]
    assert crashes_of_single_edits(objects, checker("CiliumNetworkPolicy")) == []


@FUZZ
@given(mutated([{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                 "metadata": {"name": "s-1", "namespace": "x", "labels": {"kubernetes.io/service-name": "s"}},
                 "addressType": "IPv4", "ports": [{"port": 80}],
                 "endpoints": [{"addresses": ["192.0.2.7"], "conditions": {"ready": True},
                                "targetRef": {"kind": "Pod", "name": "p"}}]}]))
def test_service_facts_never_crash_on_stored_objects(endpoint_slice: Any) -> None:
    """The engine reads whatever the store holds: a slice or service that does not parse is skipped."""
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "x"},
               "spec": {"ports": [{"port": 80}]}}
    if isinstance(endpoint_slice, dict):
        service_facts([service], [endpoint_slice])
