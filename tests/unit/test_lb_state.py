"""Desired load-balancing state (cilia.lb.state): which frontends a Service has and which backends
each gets, following Kubernetes' semantics for selectors, EndpointSlices, service types, IP
families, traffic policies and session affinity. Services and slices are built from
Kubernetes-shaped objects through the real parsers."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import pytest

from cilia.lb.k8s import parse_endpoint_slice, parse_service
from cilia.lb.model import (
    DEFAULT_AFFINITY_TIMEOUT,
    Backend,
    BackendState,
    EndpointSliceSpec,
    FrontendKey,
    FrontendType,
    IPAddress,
    L4Protocol,
    LbFrontend,
    ServiceName,
    ServiceSpec,
)
from cilia.lb.state import PodInfo, backends_for, frontends_for

ip = ipaddress.ip_address
TCP = L4Protocol.TCP
UDP = L4Protocol.UDP
ACTIVE = BackendState.ACTIVE
TERMINATING = BackendState.TERMINATING
WEB = ServiceName("default", "web")
NODE = "node-a"
NODE_ADDRESSES = (ip("192.168.1.10"), ip("192.168.1.11"))


def service(spec: dict[str, Any], status: dict[str, Any] | None = None, name: str = "web",
            namespace: str = "default") -> ServiceSpec:
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Service",
                           "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    if status is not None:
        obj["status"] = status
    return parse_service(obj)


def endpoint_slice(endpoints: list[dict[str, Any]], ports: list[dict[str, Any]], address_type: str = "IPv4",
                   name: str = "web-abc", service_name: str = "web") -> EndpointSliceSpec:
    return parse_endpoint_slice({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": address_type, "endpoints": endpoints, "ports": ports,
    })


def pod(name: str, *addresses: str, labels: dict[str, str] | None = None, namespace: str = "default",
        node: str | None = NODE, ready: bool = True, terminating: bool = False,
        named_ports: dict[tuple[str, L4Protocol], int] | None = None) -> PodInfo:
    return PodInfo(namespace=namespace, name=name, labels={"app": "web"} if labels is None else labels,
                   addresses=tuple(ip(a) for a in addresses), node=node, ready=ready, terminating=terminating,
                   named_ports=named_ports or {})


def frontends(spec: ServiceSpec, slices: Sequence[EndpointSliceSpec] = (), pods: Sequence[PodInfo] = (),
              node: str = NODE, node_addresses: Sequence[IPAddress] = NODE_ADDRESSES) -> list[LbFrontend]:
    return frontends_for(spec, spec.cluster_ips, slices, pods, node, node_addresses)


def keys(found: Sequence[LbFrontend]) -> list[tuple[str, int, L4Protocol, FrontendType]]:
    return [(str(f.key.address), f.key.port, f.key.protocol, f.type) for f in found]


def backend(address: str, port: int, state: BackendState = ACTIVE, node: str | None = NODE,
            pod_key: str | None = None) -> Backend:
    return Backend(ip(address), port, state, 1, node, pod_key)


def addresses(f: LbFrontend) -> list[str]:
    return [str(b.address) for b in f.backends]


# --- selector --------------------------------------------------------------------------------------


def test_selector_takes_ready_matching_pods_of_the_namespace_only() -> None:
    spec = service({"clusterIP": "10.96.0.10", "selector": {"app": "web", "tier": "fe"},
                    "ports": [{"port": 80, "targetPort": 8080}]})
    fe = {"app": "web", "tier": "fe"}
    pods = [
        pod("web-1", "10.0.0.1", labels={**fe, "extra": "x"}),
        pod("web-2", "10.0.0.2", labels=fe, namespace="other"),  # same labels, other namespace
        pod("web-3", "10.0.0.3", labels={"app": "web"}),  # only part of the selector
        pod("web-4", "10.0.0.4", labels={"app": "db", "tier": "fe"}),  # wrong value
        pod("web-5", "10.0.0.5", labels=fe, ready=False),  # not ready
        pod("web-6", "10.0.0.6", labels=fe, terminating=True, node="node-b"),  # terminating, still serving
        pod("web-7", labels=fe),  # no address yet
        pod("web-8", "10.0.0.8", labels=fe, node="node-b"),
    ]
    [front] = frontends(spec, pods=pods)
    assert front.key == FrontendKey(ip("10.96.0.10"), 80, TCP)
    assert front.type is FrontendType.CLUSTER_IP
    assert front.service == WEB
    assert front.port_name is None
    assert front.backends == (
        backend("10.0.0.1", 8080, pod_key="default/web-1"),
        backend("10.0.0.6", 8080, TERMINATING, node="node-b", pod_key="default/web-6"),
        backend("10.0.0.8", 8080, node="node-b", pod_key="default/web-8"),
    )
    assert front.selectable == (backend("10.0.0.1", 8080, pod_key="default/web-1"),
                                backend("10.0.0.8", 8080, node="node-b", pod_key="default/web-8"))


def test_terminating_pod_that_is_no_longer_ready_is_no_backend() -> None:
    """The EndpointSlice controller publishes a terminating pod with serving = the pod's Ready
    condition; a terminating endpoint that is not serving is no backend (SliceEndpoint.state says
    the same for slices). The selector path must agree with the slice path for the same pod."""
    spec = service({"clusterIP": "10.96.0.10", "selector": {"app": "web"}, "ports": [{"port": 80}]})
    pods = [pod("web-1", "10.0.0.1", terminating=True, ready=True),
            pod("web-2", "10.0.0.2", terminating=True, ready=False)]
    assert backends_for(spec, spec.ports[0], [], pods) == [
        backend("10.0.0.1", 80, TERMINATING, pod_key="default/web-1")]
    same_as_slices = endpoint_slice([
        {"addresses": ["10.0.0.1"], "nodeName": NODE, "targetRef": {"kind": "Pod", "name": "web-1"},
         "conditions": {"ready": False, "serving": True, "terminating": True}},
        {"addresses": ["10.0.0.2"], "nodeName": NODE, "targetRef": {"kind": "Pod", "name": "web-2"},
         "conditions": {"ready": False, "serving": False, "terminating": True}},
    ], [{"port": 80}])
    assert backends_for(spec, spec.ports[0], [same_as_slices], []) == [
        backend("10.0.0.1", 80, TERMINATING, pod_key="default/web-1")]


def test_named_target_port_resolves_per_pod() -> None:
    spec = service({"clusterIP": "10.96.0.10", "selector": {"app": "web"},
                    "ports": [{"port": 80, "targetPort": "http"}]})
    pods = [
        pod("web-1", "10.0.0.1", named_ports={("http", TCP): 8080}),
        pod("web-2", "10.0.0.2", named_ports={("http", TCP): 9090, ("metrics", TCP): 9100}),
        pod("web-3", "10.0.0.3", named_ports={("metrics", TCP): 8080}),  # lacks the name
        pod("web-4", "10.0.0.4", named_ports={("http", UDP): 8080}),  # the name, but for UDP
        pod("web-5", "10.0.0.5"),  # no named ports at all
    ]
    [front] = frontends(spec, pods=pods)
    assert front.backends == (backend("10.0.0.1", 8080, pod_key="default/web-1"),
                              backend("10.0.0.2", 9090, pod_key="default/web-2"))


def test_named_target_port_of_a_udp_service_port_uses_the_udp_container_port() -> None:
    spec = service({"clusterIP": "10.96.0.10", "selector": {"app": "web"},
                    "ports": [{"port": 53, "protocol": "UDP", "targetPort": "dns"}]})
    pods = [pod("dns-1", "10.0.0.1", named_ports={("dns", TCP): 5300, ("dns", UDP): 5353})]
    [front] = frontends(spec, pods=pods)
    assert front.key == FrontendKey(ip("10.96.0.10"), 53, UDP)
    assert front.backends == (backend("10.0.0.1", 5353, pod_key="default/dns-1"),)


def test_numeric_target_port_is_used_as_is_and_defaults_to_port() -> None:
    spec = service({"clusterIP": "10.96.0.10", "selector": {"app": "web"},
                    "ports": [{"name": "https", "port": 443, "targetPort": 8443}, {"name": "plain", "port": 81}]})
    pods = [pod("web-1", "10.0.0.1", named_ports={("https", TCP): 443, ("plain", TCP): 8081})]
    https, plain = frontends(spec, pods=pods)
    assert (https.port_name, https.backends) == ("https", (backend("10.0.0.1", 8443, pod_key="default/web-1"),))
    assert (plain.port_name, plain.backends) == ("plain", (backend("10.0.0.1", 81, pod_key="default/web-1"),))


# --- EndpointSlices --------------------------------------------------------------------------------


def test_endpoint_slices_win_over_the_selector() -> None:
    spec = service({"clusterIP": "10.96.0.10", "selector": {"app": "web"}, "ports": [{"port": 80}]})
    slices = [endpoint_slice([{"addresses": ["10.0.9.9"], "nodeName": "node-b"}], [{"port": 80}])]
    pods = [pod("web-1", "10.0.0.1")]
    [front] = frontends(spec, slices=slices, pods=pods)
    assert front.backends == (backend("10.0.9.9", 80, node="node-b"),)
    [without_slices] = frontends(spec, pods=pods)
    assert without_slices.backends == (backend("10.0.0.1", 80, pod_key="default/web-1"),)


def test_service_without_selector_and_without_slices_has_no_backends() -> None:
    spec = service({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]})
    [front] = frontends(spec, pods=[pod("web-1", "10.0.0.1")])
    assert front.backends == ()


def test_slice_port_matched_by_name_and_protocol() -> None:
    spec = service({"clusterIP": "10.96.0.10", "ports": [
        {"name": "http", "port": 80, "targetPort": 8080},
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "metrics", "port": 9100, "protocol": "UDP"},  # the slice has "metrics" only for TCP
        {"name": "admin", "port": 9000},  # the slice has no such port
    ]})
    slices = [endpoint_slice([{"addresses": ["10.0.0.1"], "nodeName": NODE}], [
        {"name": "metrics", "port": 9090},
        {"name": "dns", "port": 5353, "protocol": "UDP"},
        {"name": "http", "port": 8081},  # the slice is authoritative, not targetPort
    ])]
    found = frontends(spec, slices=slices)
    assert [(f.port_name, f.key.port, f.key.protocol, [(str(b.address), b.port) for b in f.backends])
            for f in found] == [
        ("http", 80, TCP, [("10.0.0.1", 8081)]),
        ("dns", 53, UDP, [("10.0.0.1", 5353)]),
        ("metrics", 9100, UDP, []),
        ("admin", 9000, TCP, []),
    ]


def test_unnamed_single_port_service_takes_the_unnamed_slice_port() -> None:
    spec = service({"clusterIP": "10.96.0.10", "ports": [{"port": 80, "targetPort": 8080}]})
    slices = [endpoint_slice([{"addresses": ["10.0.0.1"], "nodeName": NODE}], [{"name": "", "port": 8080}])]
    [front] = frontends(spec, slices=slices)
    assert front.backends == (backend("10.0.0.1", 8080),)


def test_unnamed_single_port_service_ignores_a_slice_port_of_the_other_protocol() -> None:
    spec = service({"clusterIP": "10.96.0.10", "ports": [{"port": 53, "protocol": "UDP"}]})
    slices = [endpoint_slice([{"addresses": ["10.0.0.1"]}], [{"port": 53, "protocol": "TCP"}])]
    [front] = frontends(spec, slices=slices)
    assert front.backends == ()


def test_only_the_first_address_of_a_slice_endpoint_is_used() -> None:
    spec = service({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]})
    slices = [endpoint_slice([{"addresses": ["10.0.0.1", "10.0.0.2", "10.0.0.3"], "nodeName": NODE}],
                             [{"port": 80}])]
    [front] = frontends(spec, slices=slices)
    assert front.backends == (backend("10.0.0.1", 80),)


def test_slice_endpoint_state_from_conditions() -> None:
    spec = service({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]})
    endpoints: list[dict[str, Any]] = [
        {"addresses": ["10.0.0.1"]},  # no conditions: ready
        {"addresses": ["10.0.0.2"], "conditions": {"ready": True}},
        {"addresses": ["10.0.0.3"], "conditions": {"ready": False, "serving": True, "terminating": True}},
        {"addresses": ["10.0.0.4"], "conditions": {"ready": False, "serving": False, "terminating": True}},
        {"addresses": ["10.0.0.5"], "conditions": {"ready": False}},  # serving defaults to ready
        {"addresses": ["10.0.0.6"], "conditions": {"ready": False, "serving": True}},  # not terminating
        {"addresses": ["10.0.0.7"], "conditions": {"terminating": True}},  # serving = ready = true
    ]
    for index, endpoint in enumerate(endpoints):
        endpoint["nodeName"] = NODE
        endpoint["targetRef"] = {"kind": "Pod", "name": f"web-{index + 1}"}
    [front] = frontends(spec, slices=[endpoint_slice(endpoints, [{"port": 80}])])
    assert front.backends == (
        backend("10.0.0.1", 80, pod_key="default/web-1"),
        backend("10.0.0.2", 80, pod_key="default/web-2"),
        backend("10.0.0.3", 80, TERMINATING, pod_key="default/web-3"),
        backend("10.0.0.7", 80, TERMINATING, pod_key="default/web-7"),
    )
    assert [str(b.address) for b in front.selectable] == ["10.0.0.1", "10.0.0.2"]


def test_endpoints_of_several_slices_are_merged() -> None:
    spec = service({"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]})
    slices = [endpoint_slice([{"addresses": ["10.0.0.2"]}], [{"name": "http", "port": 80}], name="web-b"),
              endpoint_slice([{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}],
                             [{"name": "http", "port": 80}], name="web-a")]
    [front] = frontends(spec, slices=slices)
    assert front.backends == (backend("10.0.0.1", 80, node=None), backend("10.0.0.2", 80, node=None))


# --- service types ---------------------------------------------------------------------------------


def test_node_port_service_has_a_frontend_per_node_address_plus_the_cluster_ip() -> None:
    spec = service({"type": "NodePort", "clusterIP": "10.96.0.10", "selector": {"app": "web"},
                    "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]})
    found = frontends(spec, pods=[pod("web-1", "10.0.0.1")])
    assert keys(found) == [
        ("10.96.0.10", 80, TCP, FrontendType.CLUSTER_IP),
        ("192.168.1.10", 30080, TCP, FrontendType.NODE_PORT),
        ("192.168.1.11", 30080, TCP, FrontendType.NODE_PORT),
    ]
    for front in found:
        assert front.backends == (backend("10.0.0.1", 8080, pod_key="default/web-1"),)
        assert front.local_only is False


def test_load_balancer_service_frontends() -> None:
    spec = service({"type": "LoadBalancer", "clusterIP": "10.96.0.10", "selector": {"app": "web"},
                    "externalIPs": ["203.0.113.7"],
                    "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]},
                   status={"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}, {"hostname": "lb.example.com"},
                                                        {"ip": "198.51.100.2"}]}})
    found = frontends(spec, pods=[pod("web-1", "10.0.0.1")], node_addresses=[ip("192.168.1.10")])
    assert keys(found) == [
        ("10.96.0.10", 80, TCP, FrontendType.CLUSTER_IP),
        ("192.168.1.10", 30080, TCP, FrontendType.NODE_PORT),
        ("198.51.100.1", 80, TCP, FrontendType.LOAD_BALANCER),
        ("198.51.100.2", 80, TCP, FrontendType.LOAD_BALANCER),
        ("203.0.113.7", 80, TCP, FrontendType.EXTERNAL_IP),
    ]
    assert [f.type.external for f in found] == [False, True, True, True, True]
    assert all(addresses(f) == ["10.0.0.1"] for f in found)


def test_external_ips_of_a_cluster_ip_service() -> None:
    spec = service({"clusterIP": "10.96.0.10", "externalIPs": ["203.0.113.7", "203.0.113.8"],
                    "selector": {"app": "web"}, "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]})
    found = frontends(spec, pods=[pod("web-1", "10.0.0.1")])
    assert keys(found) == [
        ("10.96.0.10", 53, UDP, FrontendType.CLUSTER_IP),
        ("203.0.113.7", 53, UDP, FrontendType.EXTERNAL_IP),
        ("203.0.113.8", 53, UDP, FrontendType.EXTERNAL_IP),
    ]
    assert [f.port_name for f in found] == ["dns", "dns", "dns"]


@pytest.mark.parametrize(("kind", "external"), [
    (FrontendType.CLUSTER_IP, False),
    (FrontendType.NODE_PORT, True),
    (FrontendType.LOAD_BALANCER, True),
    (FrontendType.EXTERNAL_IP, True),
])
def test_only_cluster_ip_frontends_are_internal(kind: FrontendType, external: bool) -> None:
    assert kind.external is external


def test_every_port_gets_its_own_frontends() -> None:
    spec = service({"type": "NodePort", "clusterIP": "10.96.0.10", "selector": {"app": "web"}, "ports": [
        {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080},
        {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
    ]})
    found = frontends(spec, pods=[pod("web-1", "10.0.0.1")], node_addresses=[ip("192.168.1.10")])
    assert [(k, f.port_name, [b.port for b in f.backends]) for k, f in zip(keys(found), found, strict=True)] == [
        (("10.96.0.10", 80, TCP, FrontendType.CLUSTER_IP), "http", [8080]),
        (("192.168.1.10", 30080, TCP, FrontendType.NODE_PORT), "http", [8080]),
        (("10.96.0.10", 53, UDP, FrontendType.CLUSTER_IP), "dns", [53]),
        (("192.168.1.10", 30053, UDP, FrontendType.NODE_PORT), "dns", [53]),
    ]


# --- dual stack ------------------------------------------------------------------------------------


def test_dual_stack_frontends_get_backends_of_their_own_family_selector() -> None:
    spec = service({"type": "NodePort", "clusterIPs": ["10.96.0.10", "fd00:96::10"], "selector": {"app": "web"},
                    "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]})
    pods = [pod("web-1", "10.0.0.1", "fd00:10::1"), pod("web-2", "fd00:10::2"), pod("web-3", "10.0.0.3")]
    found = frontends(spec, pods=pods, node_addresses=[ip("192.168.1.10"), ip("fd00:1::10")])
    assert [(k[0], k[3], addresses(f)) for k, f in zip(keys(found), found, strict=True)] == [
        ("10.96.0.10", FrontendType.CLUSTER_IP, ["10.0.0.1", "10.0.0.3"]),
        ("fd00:96::10", FrontendType.CLUSTER_IP, ["fd00:10::1", "fd00:10::2"]),
        ("192.168.1.10", FrontendType.NODE_PORT, ["10.0.0.1", "10.0.0.3"]),
        ("fd00:1::10", FrontendType.NODE_PORT, ["fd00:10::1", "fd00:10::2"]),
    ]


def test_dual_stack_frontends_get_backends_of_their_own_family_slices() -> None:
    spec = service({"clusterIPs": ["fd00:96::10", "10.96.0.10"], "ports": [{"name": "http", "port": 80}]})
    slices = [endpoint_slice([{"addresses": ["10.0.0.1"]}], [{"name": "http", "port": 8080}], name="web-v4"),
              endpoint_slice([{"addresses": ["fd00:10::1"]}], [{"name": "http", "port": 8080}],
                             address_type="IPv6", name="web-v6")]
    v6, v4 = frontends(spec, slices=slices)
    assert (str(v6.key.address), addresses(v6)) == ("fd00:96::10", ["fd00:10::1"])
    assert (str(v4.key.address), addresses(v4)) == ("10.96.0.10", ["10.0.0.1"])


def test_single_stack_v4_service_has_no_v6_backends_even_if_pods_have_them() -> None:
    spec = service({"clusterIP": "10.96.0.10", "selector": {"app": "web"}, "ports": [{"port": 80}]})
    [front] = frontends(spec, pods=[pod("web-1", "fd00:10::1"), pod("web-2", "10.0.0.2", "fd00:10::2")])
    assert addresses(front) == ["10.0.0.2"]


# --- traffic policies ------------------------------------------------------------------------------


def test_internal_traffic_policy_local_limits_cluster_ip_frontends_only() -> None:
    spec = service({"type": "NodePort", "clusterIP": "10.96.0.10", "internalTrafficPolicy": "Local",
                    "selector": {"app": "web"}, "ports": [{"port": 80, "nodePort": 30080}]})
    pods = [pod("web-1", "10.0.0.1", node="node-a"), pod("web-2", "10.0.0.2", node="node-b"),
            pod("web-3", "10.0.0.3", node=None)]
    cluster, node_port, _ = frontends(spec, pods=pods, node="node-a")
    assert (cluster.type, cluster.local_only, addresses(cluster)) == (FrontendType.CLUSTER_IP, True, ["10.0.0.1"])
    assert (node_port.type, node_port.local_only, addresses(node_port)) == (
        FrontendType.NODE_PORT, False, ["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    cluster_b = frontends(spec, pods=pods, node="node-b")[0]
    assert addresses(cluster_b) == ["10.0.0.2"]


def test_external_traffic_policy_local_limits_external_frontends_only() -> None:
    spec = service({"type": "LoadBalancer", "clusterIP": "10.96.0.10", "externalTrafficPolicy": "Local",
                    "externalIPs": ["203.0.113.7"], "selector": {"app": "web"},
                    "ports": [{"port": 80, "nodePort": 30080}]},
                   status={"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}})
    pods = [pod("web-1", "10.0.0.1", node="node-a"), pod("web-2", "10.0.0.2", node="node-b")]
    found = frontends(spec, pods=pods, node="node-a", node_addresses=[ip("192.168.1.10")])
    assert [(f.type, f.local_only, addresses(f)) for f in found] == [
        (FrontendType.CLUSTER_IP, False, ["10.0.0.1", "10.0.0.2"]),
        (FrontendType.NODE_PORT, True, ["10.0.0.1"]),
        (FrontendType.LOAD_BALANCER, True, ["10.0.0.1"]),
        (FrontendType.EXTERNAL_IP, True, ["10.0.0.1"]),
    ]


def test_external_traffic_policy_local_on_a_node_without_backends_leaves_external_frontends_empty() -> None:
    spec = service({"type": "NodePort", "clusterIP": "10.96.0.10", "externalTrafficPolicy": "Local",
                    "selector": {"app": "web"}, "ports": [{"port": 80, "nodePort": 30080}]})
    found = frontends(spec, pods=[pod("web-2", "10.0.0.2", node="node-b")], node="node-a",
                      node_addresses=[ip("192.168.1.10")])
    assert [(f.type, addresses(f)) for f in found] == [
        (FrontendType.CLUSTER_IP, ["10.0.0.2"]),
        (FrontendType.NODE_PORT, []),
    ]


def test_slice_endpoint_without_node_name_is_not_local() -> None:
    spec = service({"type": "NodePort", "clusterIP": "10.96.0.10", "internalTrafficPolicy": "Local",
                    "externalTrafficPolicy": "Local", "ports": [{"port": 80, "nodePort": 30080}]})
    slices = [endpoint_slice([{"addresses": ["10.0.0.1"], "nodeName": "node-a"},
                              {"addresses": ["10.0.0.2"], "nodeName": "node-b"},
                              {"addresses": ["10.0.0.3"]}], [{"port": 80}])]
    found = frontends(spec, slices=slices, node="node-a", node_addresses=[ip("192.168.1.10")])
    assert [(f.type, f.local_only, addresses(f)) for f in found] == [
        (FrontendType.CLUSTER_IP, True, ["10.0.0.1"]),
        (FrontendType.NODE_PORT, True, ["10.0.0.1"]),
    ]


# --- session affinity ------------------------------------------------------------------------------


@pytest.mark.parametrize(("affinity", "expected"), [
    ({}, None),
    ({"sessionAffinity": "None"}, None),
    ({"sessionAffinity": "ClientIP"}, DEFAULT_AFFINITY_TIMEOUT),
    ({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}, 60),
])
def test_affinity_timeout_on_every_frontend(affinity: dict[str, Any], expected: int | None) -> None:
    spec = service({"type": "LoadBalancer", "clusterIP": "10.96.0.10", "externalIPs": ["203.0.113.7"],
                    "selector": {"app": "web"}, "ports": [{"port": 80, "nodePort": 30080}], **affinity},
                   status={"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}})
    found = frontends(spec, pods=[pod("web-1", "10.0.0.1")])
    assert len(found) == 5
    assert [f.affinity_timeout for f in found] == [expected] * 5


def test_default_affinity_timeout_is_kubernetes_default() -> None:
    assert DEFAULT_AFFINITY_TIMEOUT == 10800


# --- no frontends / no backends --------------------------------------------------------------------


@pytest.mark.parametrize("headless", [{"clusterIP": "None"}, {"clusterIPs": ["None"]}])
def test_headless_service_has_no_frontends(headless: dict[str, Any]) -> None:
    spec = service({**headless, "selector": {"app": "web"}, "ports": [{"port": 80}]})
    assert spec.headless
    assert frontends(spec, pods=[pod("web-1", "10.0.0.1")]) == []
    # even if a cluster IP were handed in, a headless service is left alone
    assert frontends_for(spec, [ip("10.96.0.10")], [], [pod("web-1", "10.0.0.1")], NODE, NODE_ADDRESSES) == []


def test_service_without_ready_pods_keeps_its_frontends_with_no_backends() -> None:
    spec = service({"type": "NodePort", "clusterIP": "10.96.0.10", "selector": {"app": "web"},
                    "ports": [{"port": 80, "nodePort": 30080}]})
    pods = [pod("web-1", "10.0.0.1", ready=False), pod("web-2", "10.0.0.2", labels={"app": "db"})]
    found = frontends(spec, pods=pods)
    assert keys(found) == [
        ("10.96.0.10", 80, TCP, FrontendType.CLUSTER_IP),
        ("192.168.1.10", 30080, TCP, FrontendType.NODE_PORT),
        ("192.168.1.11", 30080, TCP, FrontendType.NODE_PORT),
    ]
    assert [f.backends for f in found] == [(), (), ()]
    assert [f.selectable for f in found] == [(), (), ()]


def test_service_whose_slices_have_no_ready_endpoint_keeps_its_frontend() -> None:
    spec = service({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]})
    slices = [endpoint_slice([{"addresses": ["10.0.0.1"], "conditions": {"ready": False}}], [{"port": 80}])]
    [front] = frontends(spec, slices=slices)
    assert front.key == FrontendKey(ip("10.96.0.10"), 80, TCP)
    assert front.backends == ()
