"""Service and EndpointSlice parsing: Kubernetes defaults, and bad input rejected with the object,
the exact field and the reason (the store keeps the previous version)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

import cilia.lb.kinds
from cilia.lb.k8s import parse_endpoint_slice, parse_service
from cilia.lb.kinds import is_lb_object, parse_lb_object
from cilia.lb.model import (
    DEFAULT_AFFINITY_TIMEOUT,
    BackendState,
    EndpointSliceSpec,
    L4Protocol,
    ServiceName,
    ServicePort,
    ServiceSpec,
    ServiceType,
    SliceEndpoint,
    SlicePort,
)
from cilia.resources.kinds import CORE_KINDS, KindRegistry
from cilia.resources.parse import ResourceError
from cilia.resources.store import LocalStore

ip = ipaddress.ip_address
KINDS = KindRegistry([*CORE_KINDS, *cilia.lb.kinds.KINDS])
validate = KINDS.validate
WEB = ServiceName("default", "web")


def load(text: str) -> dict[str, Any]:
    obj = yaml.safe_load(text)
    assert isinstance(obj, dict)
    return obj


def service(spec: str, name: str = "web", namespace: str = "default", status: str = "") -> dict[str, Any]:
    text = f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    return load(text + (f"status: {status}\n" if status else ""))


def endpoint_slice(body: str, labels: str = "{kubernetes.io/service-name: web}") -> dict[str, Any]:
    return load(f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
                f"metadata: {{name: web-abc, namespace: default, labels: {labels}}}\n{body}")


# --- good Services ---------------------------------------------------------------------------------


def test_cluster_ip_defaults() -> None:
    spec = parse_service(service("{clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80}]}"))
    assert spec == ServiceSpec(
        name=WEB, type=ServiceType.CLUSTER_IP, cluster_ips=(ip("10.96.0.10"),),
        ports=(ServicePort(name=None, protocol=L4Protocol.TCP, port=80, target_port=80),),
        selector={"app": "web"},
    )
    assert spec.affinity_timeout is None and not spec.headless
    assert not spec.external_traffic_local and not spec.internal_traffic_local


def test_cluster_ip_omitted_or_empty_is_allocated_by_the_agent() -> None:
    for spec_text in ("{ports: [{port: 80}]}", "{clusterIP: '', ports: [{port: 80}]}"):
        spec = parse_service(service(spec_text))
        assert spec.cluster_ips == () and not spec.headless and spec.selector is None


def test_node_port_with_named_ports_and_udp() -> None:
    spec = parse_service(service("""
  type: NodePort
  selector: {app: dns}
  ports:
  - {name: dns, protocol: UDP, port: 53, targetPort: 5353, nodePort: 30053}
  - {name: dns-tcp, port: 53, targetPort: dns-tcp}
  - {name: metrics, port: 9153, nodePort: 0}
  externalTrafficPolicy: Local
"""))
    assert spec.type is ServiceType.NODE_PORT
    assert spec.ports == (
        ServicePort("dns", L4Protocol.UDP, 53, 5353, 30053),
        ServicePort("dns-tcp", L4Protocol.TCP, 53, "dns-tcp"),
        ServicePort("metrics", L4Protocol.TCP, 9153, 9153, None),
    )
    assert spec.external_traffic_local


def test_same_node_port_for_tcp_and_udp_is_allowed() -> None:
    spec = parse_service(service("""
  type: NodePort
  ports:
  - {name: a, protocol: UDP, port: 53, nodePort: 30053}
  - {name: b, protocol: TCP, port: 53, nodePort: 30053}
"""))
    assert [p.node_port for p in spec.ports] == [30053, 30053]


def test_load_balancer_with_status_ingress() -> None:
    spec = parse_service(service(
        "{type: LoadBalancer, clusterIP: 10.96.0.20, ports: [{port: 443, targetPort: https, nodePort: 31443}],"
        " loadBalancerClass: example.com/lb, allocateLoadBalancerNodePorts: true, loadBalancerSourceRanges: [],"
        " healthCheckNodePort: 32000, externalTrafficPolicy: Local}",
        status="{loadBalancer: {ingress: [{ip: 203.0.113.7}, {hostname: lb.example.com}, {ip: '2001:db8::7'}]}}",
    ))
    assert spec.type is ServiceType.LOAD_BALANCER
    assert spec.load_balancer_ips == (ip("203.0.113.7"), ip("2001:db8::7"))
    assert spec.ports == (ServicePort(None, L4Protocol.TCP, 443, "https", 31443),)
    assert spec.external_traffic_local


def test_stale_load_balancer_status_is_ignored_for_other_types() -> None:
    spec = parse_service(service("{ports: [{port: 80}]}", status="{loadBalancer: {ingress: [{ip: 203.0.113.7}]}}"))
    assert spec.load_balancer_ips == ()


def test_external_ips_allow_external_traffic_policy_local() -> None:
    spec = parse_service(service(
        "{ports: [{port: 80}], externalIPs: [192.0.2.10, '2001:db8::10'], externalTrafficPolicy: Local}"))
    assert spec.type is ServiceType.CLUSTER_IP
    assert spec.external_ips == (ip("192.0.2.10"), ip("2001:db8::10"))
    assert spec.external_traffic_local


def test_dual_stack_cluster_ips() -> None:
    spec = parse_service(service(
        "{clusterIP: 10.96.0.30, clusterIPs: [10.96.0.30, 'fd00:10:96::30'], ipFamilies: [IPv4, IPv6],"
        " ipFamilyPolicy: RequireDualStack, ports: [{port: 80}]}"))
    assert spec.cluster_ips == (ip("10.96.0.30"), ip("fd00:10:96::30"))
    only_list = parse_service(service("{clusterIPs: ['fd00:10:96::30', 10.96.0.30], ports: [{port: 80}]}"))
    assert only_list.cluster_ips == (ip("fd00:10:96::30"), ip("10.96.0.30"))


def test_headless() -> None:
    spec = parse_service(service("{clusterIP: None, selector: {app: db}, publishNotReadyAddresses: true}"))
    assert spec.headless and spec.cluster_ips == () and spec.ports == ()
    spec = parse_service(service("{clusterIP: None, clusterIPs: [None], ports: [{port: 5432}]}"))
    assert spec.headless and spec.cluster_ips == ()


def test_session_affinity_default_and_explicit_timeout() -> None:
    assert parse_service(service("{ports: [{port: 80}], sessionAffinity: ClientIP}")).affinity_timeout \
        == DEFAULT_AFFINITY_TIMEOUT
    assert parse_service(service("{ports: [{port: 80}], sessionAffinity: ClientIP, sessionAffinityConfig: {}}"))\
        .affinity_timeout == DEFAULT_AFFINITY_TIMEOUT
    explicit = service("{ports: [{port: 80}], sessionAffinity: ClientIP,"
                       " sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}}")
    assert parse_service(explicit).affinity_timeout == 60
    assert parse_service(service("{ports: [{port: 80}], sessionAffinity: None}")).affinity_timeout is None


def test_traffic_policies() -> None:
    spec = parse_service(service("{ports: [{port: 80}], internalTrafficPolicy: Local, externalTrafficPolicy: Cluster}"))
    assert spec.internal_traffic_local and not spec.external_traffic_local
    spec = parse_service(service("{type: LoadBalancer, ports: [{port: 80}], externalTrafficPolicy: Local,"
                                 " internalTrafficPolicy: Cluster}"))
    assert spec.external_traffic_local and not spec.internal_traffic_local


def test_empty_selector_means_no_selector_and_lb_dispatch() -> None:
    obj = service("{ports: [{port: 80}], selector: {}}")
    assert is_lb_object(obj)
    spec = parse_lb_object(obj)
    assert isinstance(spec, ServiceSpec) and spec.selector is None
    assert not is_lb_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}})


# --- good EndpointSlices -----------------------------------------------------------------------------


def test_endpoint_slice_condition_defaults_and_states() -> None:
    obj = endpoint_slice("""
addressType: IPv4
endpoints:
- addresses: [10.0.1.5]
  nodeName: node-a
  targetRef: {kind: Pod, name: web-1, namespace: default, uid: abc}
  zone: a
  hostname: web-1
  hints: {forZones: [{name: a}]}
- addresses: [10.0.1.6]
  conditions: {ready: false}
- addresses: [10.0.1.7]
  conditions: {ready: false, serving: true, terminating: true}
  targetRef: {kind: Pod, name: web-3}
- addresses: [10.0.1.8]
  conditions: {ready: false, serving: false, terminating: true}
- addresses: [10.0.1.9]
  conditions: {ready: null, serving: null, terminating: null}
  targetRef: {kind: Node, name: node-b}
ports:
- {name: http, port: 8080}
- {name: dns, protocol: UDP, port: 5353, appProtocol: dns}
""")
    spec = parse_endpoint_slice(obj)
    assert spec == EndpointSliceSpec(
        namespace="default", name="web-abc", service=WEB, address_type="IPv4",
        endpoints=(
            SliceEndpoint((ip("10.0.1.5"),), ready=True, serving=True, terminating=False, node_name="node-a",
                          pod="default/web-1"),
            SliceEndpoint((ip("10.0.1.6"),), ready=False, serving=False, terminating=False),
            SliceEndpoint((ip("10.0.1.7"),), ready=False, serving=True, terminating=True, pod="default/web-3"),
            SliceEndpoint((ip("10.0.1.8"),), ready=False, serving=False, terminating=True),
            SliceEndpoint((ip("10.0.1.9"),)),
        ),
        ports=(SlicePort("http", L4Protocol.TCP, 8080), SlicePort("dns", L4Protocol.UDP, 5353)),
    )
    assert [e.state for e in spec.endpoints] == [
        BackendState.ACTIVE, None, BackendState.TERMINATING, None, BackendState.ACTIVE]


def test_endpoint_slice_ipv6_and_unnamed_ports() -> None:
    spec = parse_endpoint_slice(endpoint_slice("""
addressType: IPv6
endpoints:
- addresses: ['fd00::5']
  conditions: {ready: true, serving: true, terminating: false}
ports:
- {port: 80}
"""))
    assert spec.address_type == "IPv6"
    assert spec.endpoints[0].addresses == (ip("fd00::5"),) and spec.endpoints[0].state is BackendState.ACTIVE
    assert spec.ports == (SlicePort(None, L4Protocol.TCP, 80),)
    empty_name = parse_endpoint_slice(endpoint_slice("addressType: IPv4\nendpoints: []\nports: [{name: '', port: 80}]"))
    assert empty_name.ports == (SlicePort(None, L4Protocol.TCP, 80),) and empty_name.endpoints == ()


def test_endpoint_slice_passes_store_validation() -> None:
    obj = endpoint_slice("addressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}]\nports: [{port: 80}]")
    del obj["metadata"]["namespace"]
    validate(obj)
    assert obj["metadata"]["namespace"] == "default"
    assert isinstance(parse_lb_object(obj), EndpointSliceSpec)


# --- bad input -------------------------------------------------------------------------------------

S = "Service default/web: field "
E = "EndpointSlice default/web-abc: field "
SLICE_OK = "addressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}]\n"

BAD: list[tuple[dict[str, Any], str]] = [
    (service("{ports: [{port: 70000}]}"), S + "'spec.ports[0].port': 70000 is out of range 1-65535"),
    (service("{ports: [{targetPort: 80}]}"), S + "'spec.ports[0].port': is required"),
    (service("{ports: [{port: '80'}]}"), S + "'spec.ports[0].port': must be an integer 1-65535"),
    (service("{ports: []}"), S + "'spec.ports': is required"),
    (service("{ports: [{name: a, port: 80}, {port: 81}]}"),
     S + "'spec.ports[1].name': is required when the service has more than one port"),
    (service("{ports: [{name: a, port: 80}, {name: a, port: 81}]}"),
     S + "'spec.ports[1].name': 'a' is already used by spec.ports[0]"),
    (service("{ports: [{name: Http, port: 80}]}"), S + "'spec.ports[0].name': 'Http' is not a DNS-1123 label"),
    (service("{ports: [{name: a, port: 80}, {name: b, port: 80, protocol: TCP}]}"),
     S + "'spec.ports[1].port': 80/TCP is already used by spec.ports[0]"),
    (service("{ports: [{port: 80, protocol: SCTP}]}"), S + "'spec.ports[0].protocol': SCTP is not supported yet"),
    (service("{ports: [{port: 80, protocol: tcp}]}"), S + "'spec.ports[0].protocol': 'tcp' is not one of TCP, UDP"),
    (service("{ports: [{name: a, port: 80}, {name: b, port: 81, targetPort: 0x10000}]}"),
     S + "'spec.ports[1].targetPort': 65536 is out of range 1-65535"),
    (service("{ports: [{port: 80, targetPort: '8080'}]}"),
     S + "'spec.ports[0].targetPort': '8080' is neither a port number 1-65535 nor a valid port name"),
    (service("{ports: [{port: 80, targetPort: a-very-long-port-name}]}"),
     S + "'spec.ports[0].targetPort': 'a-very-long-port-name' is neither"),
    (service("{ports: [{port: 80, targetPort: Http}]}"), S + "'spec.ports[0].targetPort': 'Http' is neither"),
    (service("{ports: [{port: 80, nodePort: 30080}]}"),
     S + "'spec.ports[0].nodePort': may only be set for NodePort and LoadBalancer services"),
    (service("{type: NodePort, ports: [{port: 80, nodePort: 8080}]}"),
     S + "'spec.ports[0].nodePort': 8080 is out of range 30000-32767"),
    (service("{type: NodePort, ports: [{name: a, port: 80, nodePort: 30080}, {name: b, port: 81, nodePort: 30080}]}"),
     S + "'spec.ports[1].nodePort': 30080/TCP is already used by spec.ports[0]"),
    (service("{ports: [{port: 80, apProtocol: http}]}"), S + "'spec.ports[0].apProtocol': unknown field"),
    (service("{type: ExternalName, externalName: example.com}"), S + "'spec.type': ExternalName is not supported yet"),
    (service("{type: Internal, ports: [{port: 80}]}"),
     S + "'spec.type': 'Internal' is not one of ClusterIP, NodePort, LoadBalancer"),
    (service("{clusterIP: 10.96.0.300, ports: [{port: 80}]}"),
     S + "'spec.clusterIP': '10.96.0.300' is not an IP address"),
    (service("{clusterIP: 10.96.0.1, clusterIPs: [10.96.0.2], ports: [{port: 80}]}"),
     S + "'spec.clusterIPs[0]': '10.96.0.2' does not match spec.clusterIP '10.96.0.1'"),
    (service("{clusterIPs: [10.96.0.1, 10.96.0.2], ports: [{port: 80}]}"),
     S + "'spec.clusterIPs[1]': must be of the other IP family"),
    (service("{clusterIPs: [10.96.0.1, 'fd00::1', 'fd00::2'], ports: [{port: 80}]}"),
     S + "'spec.clusterIPs': has 3 entries"),
    (service("{clusterIPs: ['fd00::1', nope], ports: [{port: 80}]}"),
     S + "'spec.clusterIPs[1]': 'nope' is not an IP address"),
    (service("{type: NodePort, clusterIP: None, ports: [{port: 80}]}"),
     S + "'spec.clusterIP': 'None' (headless) cannot be used with type NodePort"),
    (service("{type: LoadBalancer, clusterIPs: [None], ports: [{port: 80}]}"),
     S + "'spec.clusterIPs[0]': 'None' (headless) cannot be used with type LoadBalancer"),
    (service("{ports: [{port: 80}], selector: {app: 'bad value!'}}"),
     S + "'spec.selector.app': value 'bad value!' is not a valid label value"),
    (service("{ports: [{port: 80}], selector: {app: 1}}"), S + "'spec.selector.app': keys and values must be strings"),
    (service("{ports: [{port: 80}], externalIPs: [192.0.2.1, example.com]}"),
     S + "'spec.externalIPs[1]': 'example.com' is not an IP address"),
    (service("{ports: [{port: 80}], sessionAffinity: Cookie}"),
     S + "'spec.sessionAffinity': 'Cookie' is not one of None, ClientIP"),
    (service("{ports: [{port: 80}], sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}}"),
     S + "'spec.sessionAffinityConfig': may only be set when spec.sessionAffinity is ClientIP"),
    (service("{ports: [{port: 80}], sessionAffinity: ClientIP,"
             " sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}}"),
     S + "'spec.sessionAffinityConfig.clientIP.timeoutSeconds': 0 is out of range 1-86400"),
    (service("{ports: [{port: 80}], sessionAffinity: ClientIP,"
             " sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}}"),
     S + "'spec.sessionAffinityConfig.clientIP.timeoutSeconds': 86401 is out of range 1-86400"),
    (service("{ports: [{port: 80}], externalTrafficPolicy: Local}"),
     S + "'spec.externalTrafficPolicy': Local is only valid for NodePort and LoadBalancer services"),
    (service("{type: NodePort, ports: [{port: 80}], externalTrafficPolicy: local}"),
     S + "'spec.externalTrafficPolicy': 'local' is not one of Cluster, Local"),
    (service("{ports: [{port: 80}], internalTrafficPolicy: Node}"),
     S + "'spec.internalTrafficPolicy': 'Node' is not one of Cluster, Local"),
    (service("{ports: [{port: 80}], topologyKeys: [a]}"), S + "'spec.topologyKeys': unknown field"),
    (service("{type: LoadBalancer, ports: [{port: 80}]}", status="{loadBalancer: {ingress: [{ip: lb.example.com}]}}"),
     S + "'status.loadBalancer.ingress[0].ip': 'lb.example.com' is not an IP address"),
    (service("{ports: [{port: 80}]}", name="1web"), "Service default/1web: field 'metadata.name': a Service name must"),
    (load("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\n"), S + "'spec': is required"),
    (load("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {ports: [{port: 80}]}\n"
          "spek: {}\n"), S + "'spek': unknown field"),
    # EndpointSlices
    (endpoint_slice(SLICE_OK, labels="{app: web}"),
     E + "'metadata.labels.kubernetes.io/service-name': is required"),
    (endpoint_slice(SLICE_OK, labels="{kubernetes.io/service-name: Web}"),
     E + "'metadata.labels.kubernetes.io/service-name': 'Web' is not a valid Service name"),
    (endpoint_slice("addressType: FQDN\nendpoints: []\n"), E + "'addressType': FQDN is not supported yet"),
    (endpoint_slice("addressType: ipv4\nendpoints: []\n"), E + "'addressType': 'ipv4' is not one of IPv4, IPv6"),
    (endpoint_slice("endpoints: []\n"), E + "'addressType': is required"),
    (endpoint_slice("addressType: IPv4\nendpoints: [{addresses: [10.0.0.300]}]\n"),
     E + "'endpoints[0].addresses[0]': '10.0.0.300' is not an IPv4 address"),
    (endpoint_slice("addressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}, {addresses: ['fd00::1']}]\n"),
     E + "'endpoints[1].addresses[0]': 'fd00::1' is not an IPv4 address"),
    (endpoint_slice("addressType: IPv6\nendpoints: [{addresses: [10.0.0.1]}]\n"),
     E + "'endpoints[0].addresses[0]': '10.0.0.1' is not an IPv6 address"),
    (endpoint_slice("addressType: IPv4\nendpoints: [{addresses: []}]\n"),
     E + "'endpoints[0].addresses': must have 1 to 100 entries, has 0"),
    (endpoint_slice("addressType: IPv4\nendpoints: [{addresses: [" + ", ".join(f"10.0.0.{i}" for i in range(101))
                    + "]}]\n"), E + "'endpoints[0].addresses': must have 1 to 100 entries, has 101"),
    (endpoint_slice("addressType: IPv4\nendpoints: [{addresses: [10.0.0.1], conditions: {ready: 'yes'}}]\n"),
     E + "'endpoints[0].conditions.ready': must be true or false, got 'yes'"),
    (endpoint_slice("addressType: IPv4\nendpoints: [{addresses: [10.0.0.1], conditions: {healthy: true}}]\n"),
     E + "'endpoints[0].conditions.healthy': unknown field"),
    (endpoint_slice("addressType: IPv4\nendpoints: [{addresses: [10.0.0.1], nodeName: Node_A}]\n"),
     E + "'endpoints[0].nodeName': 'Node_A' is not a valid node name"),
    (endpoint_slice("addressType: IPv4\nendpoints: [{addresses: [10.0.0.1], targetRef: {kind: Pod}}]\n"),
     E + "'endpoints[0].targetRef.name': is required when the target is a Pod"),
    (endpoint_slice("addressType: IPv4\nendpoints: [{addresses: [10.0.0.1], targetRef: {kind: Pod, name: Web_1}}]\n"),
     E + "'endpoints[0].targetRef.name': 'Web_1' is not a valid Pod name"),
    (endpoint_slice("addressType: IPv4\nendpoints: [{addresses: [10.0.0.1], weight: 2}]\n"),
     E + "'endpoints[0].weight': unknown field"),
    (endpoint_slice(SLICE_OK + "ports: [{port: 0}]\n"), E + "'ports[0].port': 0 is out of range 1-65535"),
    (endpoint_slice(SLICE_OK + "ports: [{name: http}]\n"), E + "'ports[0].port': is required"),
    (endpoint_slice(SLICE_OK + "ports: [{port: 80, protocol: SCTP}]\n"),
     E + "'ports[0].protocol': SCTP is not supported yet"),
    (endpoint_slice(SLICE_OK + "ports: [{name: a, port: 80}, {name: a, port: 81}]\n"),
     E + "'ports[1].name': 'a' is already used by ports[0]"),
    (endpoint_slice(SLICE_OK + "ports: [{name: Http_1, port: 80}]\n"),
     E + "'ports[0].name': 'Http_1' is not a DNS-1123 label"),
    (endpoint_slice(SLICE_OK + "spec: {}\n"), E + "'spec': unknown field"),
    (endpoint_slice("addressType: IPv4\nendpoints: {addresses: [10.0.0.1]}\n"), E + "'endpoints': must be a list"),
]


@pytest.mark.parametrize(("obj", "message"), BAD, ids=[m.split("field ")[-1][:60] for _o, m in BAD])
def test_bad_input_names_object_field_and_reason(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(ResourceError) as raised:
        validate(obj)  # through the store's validator: validate_common, then a complete parse
    assert message in str(raised.value)


def test_kinds_are_registered_namespaced() -> None:
    service_kind, slice_kind = KINDS.get("v1", "Service"), KINDS.get("discovery.k8s.io/v1", "EndpointSlice")
    assert service_kind is not None and service_kind.namespaced is True
    assert slice_kind is not None and slice_kind.namespaced is True
    assert {"Service", "EndpointSlice"} == cilia.lb.kinds.LB_KINDS


def test_store_rejects_a_bad_service_and_keeps_the_good_one(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "resources.json", KINDS)
    good = service("{clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}")
    assert [o.action for o in store.apply([good])] == ["created"]
    bad = service("{clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: 80800}]}")
    with pytest.raises(ResourceError, match=r"Service default/web: field 'spec.ports\[0\].targetPort': 80800"):
        store.apply([bad])
    stored = store.get("Service", "default", "web")
    assert stored is not None
    assert stored["spec"]["ports"][0]["targetPort"] == 8080
    assert parse_service(stored).ports[0].target_port == 8080


def test_store_accepts_a_service_and_its_slice_in_one_batch(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "resources.json", KINDS)
    slice_obj = endpoint_slice(SLICE_OK + "ports: [{port: 8080}]\n")
    outcomes = store.apply([service("{ports: [{port: 80, targetPort: 8080}]}"), slice_obj])
    assert [(o.kind, o.action) for o in outcomes] == [("Service", "created"), ("EndpointSlice", "created")]
    stored = store.get("EndpointSlice", "default", "web-abc")
    assert stored is not None and parse_endpoint_slice(stored).service == WEB
