"""`v1 Service` and `discovery.k8s.io/v1 EndpointSlice` -> the load-balancing model, with the
Kubernetes defaults and validation rules that matter to a load balancer.

Errors name the object, the exact field path and the problem, the way the policy parsers do:
`Service default/web: field 'spec.ports[0].port': 70000 is out of range 1-65535`.

Pure Python: no kernel, no maps, no netlink.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from cilia.lb.model import (
    DEFAULT_AFFINITY_TIMEOUT,
    EndpointSliceSpec,
    IPAddress,
    L4Protocol,
    ServiceName,
    ServicePort,
    ServiceSpec,
    ServiceType,
    SliceEndpoint,
    SlicePort,
)
from cilia.resources.fields import Fail, as_list, check_fields
from cilia.resources.parse import ResourceError
from cilia.resources.validate import DNS1123_LABEL, DNS1123_SUBDOMAIN, describe, validate_labels

SERVICE_API_VERSION = "v1"
SERVICE_KIND = "Service"
SLICE_API_VERSION = "discovery.k8s.io/v1"
SLICE_KIND = "EndpointSlice"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

SERVICE_SPEC_FIELDS = {
    "type", "clusterIP", "clusterIPs", "ports", "selector", "externalIPs", "sessionAffinity",
    "sessionAffinityConfig", "externalTrafficPolicy", "internalTrafficPolicy",
    # accepted and ignored:
    "ipFamilies", "ipFamilyPolicy", "allocateLoadBalancerNodePorts", "loadBalancerClass",
    "publishNotReadyAddresses", "healthCheckNodePort", "loadBalancerSourceRanges", "loadBalancerIP",
    "externalName", "trafficDistribution",
}
SERVICE_PORT_FIELDS = {"name", "protocol", "port", "targetPort", "nodePort", "appProtocol"}
SLICE_TOP_LEVEL = {"apiVersion", "kind", "metadata", "addressType", "endpoints", "ports"}
SLICE_ENDPOINT_FIELDS = {"addresses", "conditions", "nodeName", "targetRef", "hostname", "zone", "hints",
                         "deprecatedTopology"}
SLICE_PORT_FIELDS = {"name", "protocol", "port", "appProtocol"}
OBJECT_REFERENCE_FIELDS = {"kind", "name", "namespace", "uid", "apiVersion", "resourceVersion", "fieldPath"}

NODE_PORT_RANGE = (30000, 32767)
MAX_AFFINITY_TIMEOUT = 86400
MAX_SLICE_ENDPOINTS = 1000
MAX_ENDPOINT_ADDRESSES = 100

# A Service name is a DNS-1035 label: starts with a letter.
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?\Z")
# IANA_SVC_NAME (a container port name): lowercase alphanumerics and '-', no '-' at either end and
# no '--', at least one letter, at most 15 characters.
IANA_SVC_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_LETTER = re.compile(r"[a-z]")

def _failer(obj: dict[str, Any]) -> Fail:
    def fail(field: str, problem: str) -> ResourceError:
        return ResourceError(f"{describe(obj)}: field {field!r}: {problem}")

    return fail


# --- small typed readers -------------------------------------------------------------------------


def _int(raw: Any, where: str, fail: Fail, low: int, high: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise fail(where, f"must be an integer {low}-{high}, got {raw!r}")
    if not low <= raw <= high:
        raise fail(where, f"{raw} is out of range {low}-{high}")
    return raw


def _port(raw: Any, where: str, fail: Fail) -> int:
    if raw is None:
        raise fail(where, "is required and must be an integer 1-65535")
    return _int(raw, where, fail, 1, 65535)


def _bool(raw: Any, where: str, fail: Fail) -> bool | None:
    if raw is not None and not isinstance(raw, bool):
        raise fail(where, f"must be true or false, got {raw!r}")
    return raw


def _string(raw: Any, where: str, fail: Fail) -> str:
    if not isinstance(raw, str):
        raise fail(where, f"must be a string, got {raw!r}")
    return raw


def _choice(raw: Any, where: str, fail: Fail, allowed: tuple[str, ...], default: str,
            unsupported: tuple[str, ...] = ()) -> str:
    """An enum field; case-sensitive like the Kubernetes API. None and "" mean the default."""
    if raw is None or raw == "":
        return default
    if raw in unsupported:
        raise fail(where, f"{raw} is not supported yet")
    if raw not in allowed:
        raise fail(where, f"{raw!r} is not one of {', '.join(allowed)}")
    return str(raw)


def _ip(raw: Any, where: str, fail: Fail, version: int | None = None) -> IPAddress:
    family = {None: "an IP", 4: "an IPv4", 6: "an IPv6"}[version]
    if not isinstance(raw, str) or not raw or "%" in raw:
        raise fail(where, f"{raw!r} is not {family} address")
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        raise fail(where, f"{raw!r} is not {family} address") from None
    if version is not None and address.version != version:
        raise fail(where, f"{raw!r} is not {family} address")
    return address


def _protocol(raw: Any, where: str, fail: Fail) -> L4Protocol:
    return L4Protocol(_choice(raw, where, fail, ("TCP", "UDP"), "TCP", unsupported=("SCTP",)))


def _metadata(obj: dict[str, Any], fail: Fail) -> tuple[str, str, dict[str, Any]]:
    """(namespace, name, labels) of an object validate_common has (normally) checked already."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        raise fail("metadata", "is required and must be an object")
    name = metadata.get("name")
    if not isinstance(name, str) or len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        raise fail("metadata.name", "is required and must be a DNS-1123 subdomain (lowercase, '-', '.')")
    namespace = metadata.get("namespace") or "default"
    if not isinstance(namespace, str) or not DNS1123_LABEL.match(namespace):
        raise fail("metadata.namespace", "must be a DNS-1123 label")
    labels = metadata.get("labels") or {}
    validate_labels(obj, labels, "metadata.labels")
    return namespace, name, labels


def _is_service_name(name: str) -> bool:
    return len(name) <= 63 and DNS1035_LABEL.match(name) is not None


# --- Service -------------------------------------------------------------------------------------


def parse_service(obj: dict[str, Any]) -> ServiceSpec:
    """A `v1 Service` (as `kubectl apply` takes it) -> ServiceSpec; ResourceError naming the field."""
    fail = _failer(obj)
    namespace, name, _labels = _metadata(obj, fail)
    if not _is_service_name(name):
        raise fail("metadata.name", "a Service name must be a DNS-1035 label (at most 63 characters: lowercase "
                                    "letters, digits and '-', starting with a letter)")
    if obj.get("spec") is None:
        raise fail("spec", "is required")
    spec = check_fields(obj["spec"], SERVICE_SPEC_FIELDS, "spec", fail)

    if spec.get("type") == "ExternalName":
        raise fail("spec.type", "ExternalName is not supported yet")
    service_type = ServiceType(_choice(spec.get("type"), "spec.type", fail,
                                       tuple(t.value for t in ServiceType), ServiceType.CLUSTER_IP.value))
    headless, cluster_ips, none_field = _cluster_ips(spec, fail)
    if headless and service_type is not ServiceType.CLUSTER_IP:
        raise fail(none_field, f"'None' (headless) cannot be used with type {service_type}")

    ports = _service_ports(spec, service_type, headless, fail)

    selector_raw = spec.get("selector")
    validate_labels(obj, selector_raw, "spec.selector")
    selector = dict(selector_raw) if selector_raw else None  # {} selects nothing, as no selector

    external_ips = tuple(_ip(raw, f"spec.externalIPs[{i}]", fail)
                         for i, raw in enumerate(as_list(spec.get("externalIPs"), "spec.externalIPs", fail)))

    affinity_timeout = _affinity(spec, fail)

    external_policy = _choice(spec.get("externalTrafficPolicy"), "spec.externalTrafficPolicy", fail,
                              ("Cluster", "Local"), "Cluster")
    externally_reachable = service_type is not ServiceType.CLUSTER_IP or bool(external_ips)
    if external_policy == "Local" and not externally_reachable:
        raise fail("spec.externalTrafficPolicy", "Local is only valid for NodePort and LoadBalancer services or "
                                                 "with spec.externalIPs")
    internal_policy = _choice(spec.get("internalTrafficPolicy"), "spec.internalTrafficPolicy", fail,
                              ("Cluster", "Local"), "Cluster")

    load_balancer_ips = _ingress_ips(obj.get("status"), fail)
    if service_type is not ServiceType.LOAD_BALANCER:
        load_balancer_ips = ()  # a stale status from when the service was a LoadBalancer

    return ServiceSpec(
        name=ServiceName(namespace, name),
        type=service_type,
        cluster_ips=cluster_ips,
        ports=ports,
        headless=headless,
        selector=selector,
        external_ips=external_ips,
        load_balancer_ips=load_balancer_ips,
        affinity_timeout=affinity_timeout,
        external_traffic_local=external_policy == "Local",
        internal_traffic_local=internal_policy == "Local",
    )


def _cluster_ips(spec: dict[str, Any], fail: Fail) -> tuple[bool, tuple[IPAddress, ...], str]:
    """(headless, addresses, the field that said "None")."""
    single = spec.get("clusterIP")
    if single is not None and not isinstance(single, str):
        raise fail("spec.clusterIP", f"must be an IP address, \"None\" or \"\", got {single!r}")
    single_ip = _ip(single, "spec.clusterIP", fail) if single not in (None, "", "None") else None
    multi = as_list(spec.get("clusterIPs"), "spec.clusterIPs", fail)
    if len(multi) > 2:
        raise fail("spec.clusterIPs", f"has {len(multi)} entries: at most two, one per IP family")
    for index, raw in enumerate(multi):
        if raw != "None":
            _ip(raw, f"spec.clusterIPs[{index}]", fail)
    if multi and single not in (None, ""):
        first = multi[0]
        agree = first == single if "None" in (first, single) else ipaddress.ip_address(first) == single_ip
        if not agree:
            raise fail("spec.clusterIPs[0]", f"{first!r} does not match spec.clusterIP {single!r}")
    if multi:
        if "None" in multi:
            if len(multi) > 1:
                raise fail("spec.clusterIPs", "'None' (headless) must be the only entry")
            return True, (), "spec.clusterIP" if single == "None" else "spec.clusterIPs[0]"
        addresses = tuple(ipaddress.ip_address(raw) for raw in multi)
        if len(addresses) == 2 and addresses[0].version == addresses[1].version:
            raise fail("spec.clusterIPs[1]", f"must be of the other IP family than spec.clusterIPs[0] "
                                             f"(one IPv4 and one IPv6), got {multi[1]!r}")
        return False, addresses, ""
    if single == "None":
        return True, (), "spec.clusterIP"
    return False, (single_ip,) if single_ip is not None else (), ""


def _target_port(raw: Any, port: int, where: str, fail: Fail) -> int | str:
    if raw is None or raw == 0 or raw == "":  # Kubernetes defaults targetPort to port
        return port
    if isinstance(raw, str):
        if len(raw) > 15 or not IANA_SVC_NAME.match(raw) or "--" in raw or not _LETTER.search(raw):
            raise fail(where, f"{raw!r} is neither a port number 1-65535 nor a valid port name (at most 15 "
                              "characters: lowercase letters, digits and '-', with at least one letter)")
        return raw
    return _int(raw, where, fail, 1, 65535)


def _service_ports(spec: dict[str, Any], service_type: ServiceType, headless: bool, fail: Fail,
                   ) -> tuple[ServicePort, ...]:
    raw_ports = as_list(spec.get("ports"), "spec.ports", fail)
    if not raw_ports and not headless:
        raise fail("spec.ports", "is required: at least one port (only a headless service may have none)")
    names: dict[str, str] = {}
    pairs: dict[tuple[int, L4Protocol], str] = {}
    node_ports: dict[tuple[int, L4Protocol], str] = {}
    ports: list[ServicePort] = []
    for index, raw in enumerate(raw_ports):
        where = f"spec.ports[{index}]"
        check_fields(raw, SERVICE_PORT_FIELDS, where, fail)
        name = raw.get("name")
        if name is not None and not isinstance(name, str):
            raise fail(f"{where}.name", f"must be a string, got {name!r}")
        if not name:
            if len(raw_ports) > 1:
                raise fail(f"{where}.name", "is required when the service has more than one port")
            name = None
        else:
            if len(name) > 63 or not DNS1123_LABEL.match(name):
                raise fail(f"{where}.name", f"{name!r} is not a DNS-1123 label (lowercase letters, digits, '-')")
            if name in names:
                raise fail(f"{where}.name", f"{name!r} is already used by {names[name]}")
            names[name] = where
        protocol = _protocol(raw.get("protocol"), f"{where}.protocol", fail)
        port = _port(raw.get("port"), f"{where}.port", fail)
        if (port, protocol) in pairs:
            raise fail(f"{where}.port", f"{port}/{protocol} is already used by {pairs[(port, protocol)]}")
        pairs[(port, protocol)] = where
        target = _target_port(raw.get("targetPort"), port, f"{where}.targetPort", fail)
        node_port: int | None = None
        node_raw = raw.get("nodePort")
        if node_raw is not None and node_raw != 0:  # 0: allocate one
            if service_type is ServiceType.CLUSTER_IP:
                raise fail(f"{where}.nodePort", "may only be set for NodePort and LoadBalancer services")
            node_port = _int(node_raw, f"{where}.nodePort", fail, *NODE_PORT_RANGE)
            if (node_port, protocol) in node_ports:
                raise fail(f"{where}.nodePort",
                           f"{node_port}/{protocol} is already used by {node_ports[(node_port, protocol)]}")
            node_ports[(node_port, protocol)] = where
        if raw.get("appProtocol") is not None:
            _string(raw["appProtocol"], f"{where}.appProtocol", fail)
        ports.append(ServicePort(name=name, protocol=protocol, port=port, target_port=target, node_port=node_port))
    return tuple(ports)


def _affinity(spec: dict[str, Any], fail: Fail) -> int | None:
    affinity = _choice(spec.get("sessionAffinity"), "spec.sessionAffinity", fail, ("None", "ClientIP"), "None")
    config = spec.get("sessionAffinityConfig")
    if affinity != "ClientIP":
        if config is not None:
            raise fail("spec.sessionAffinityConfig", "may only be set when spec.sessionAffinity is ClientIP")
        return None
    if config is None:
        return DEFAULT_AFFINITY_TIMEOUT
    check_fields(config, {"clientIP"}, "spec.sessionAffinityConfig", fail)
    client = config.get("clientIP")
    if client is None:
        return DEFAULT_AFFINITY_TIMEOUT
    check_fields(client, {"timeoutSeconds"}, "spec.sessionAffinityConfig.clientIP", fail)
    timeout = client.get("timeoutSeconds")
    if timeout is None:
        return DEFAULT_AFFINITY_TIMEOUT
    return _int(timeout, "spec.sessionAffinityConfig.clientIP.timeoutSeconds", fail, 1, MAX_AFFINITY_TIMEOUT)


def _ingress_ips(status: Any, fail: Fail) -> tuple[IPAddress, ...]:
    """status.loadBalancer.ingress[].ip; hostname-only entries are ignored."""
    if status is None:
        return ()
    check_fields(status, {"loadBalancer", "conditions"}, "status", fail)
    balancer = status.get("loadBalancer")
    if balancer is None:
        return ()
    check_fields(balancer, {"ingress"}, "status.loadBalancer", fail)
    addresses: list[IPAddress] = []
    for index, entry in enumerate(as_list(balancer.get("ingress"), "status.loadBalancer.ingress", fail)):
        where = f"status.loadBalancer.ingress[{index}]"
        check_fields(entry, {"ip", "hostname", "ipMode", "ports"}, where, fail)
        if entry.get("ip") not in (None, ""):
            addresses.append(_ip(entry["ip"], f"{where}.ip", fail))
    return tuple(addresses)


# --- EndpointSlice -------------------------------------------------------------------------------


def parse_endpoint_slice(obj: dict[str, Any]) -> EndpointSliceSpec:
    """A `discovery.k8s.io/v1 EndpointSlice` -> EndpointSliceSpec, with the condition defaults applied."""
    fail = _failer(obj)
    for key in obj:
        if key not in SLICE_TOP_LEVEL:
            raise fail(str(key), "unknown field")
    namespace, name, labels = _metadata(obj, fail)
    service = labels.get(SERVICE_NAME_LABEL)
    label_field = f"metadata.labels.{SERVICE_NAME_LABEL}"
    if service is None:
        raise fail(label_field, "is required: it names the Service (in this namespace) the slice belongs to")
    if not isinstance(service, str) or not _is_service_name(service):
        raise fail(label_field, f"{service!r} is not a valid Service name (a DNS-1035 label)")

    address_type = obj.get("addressType")
    if address_type is None:
        raise fail("addressType", "is required: IPv4 or IPv6")
    if address_type == "FQDN":
        raise fail("addressType", "FQDN is not supported yet")
    if address_type not in ("IPv4", "IPv6"):
        raise fail("addressType", f"{address_type!r} is not one of IPv4, IPv6")
    version = 4 if address_type == "IPv4" else 6

    raw_endpoints = as_list(obj.get("endpoints"), "endpoints", fail)
    if len(raw_endpoints) > MAX_SLICE_ENDPOINTS:
        raise fail("endpoints", f"has {len(raw_endpoints)} entries: at most {MAX_SLICE_ENDPOINTS}")
    endpoints = tuple(_slice_endpoint(raw, f"endpoints[{i}]", version, namespace, fail)
                      for i, raw in enumerate(raw_endpoints))

    names: dict[str, str] = {}
    ports: list[SlicePort] = []
    for index, raw in enumerate(as_list(obj.get("ports"), "ports", fail)):
        where = f"ports[{index}]"
        check_fields(raw, SLICE_PORT_FIELDS, where, fail)
        port_name = raw.get("name")
        if port_name is not None and not isinstance(port_name, str):
            raise fail(f"{where}.name", f"must be a string, got {port_name!r}")
        if port_name and (len(port_name) > 63 or not DNS1123_LABEL.match(port_name)):
            raise fail(f"{where}.name", f"{port_name!r} is not a DNS-1123 label (lowercase letters, digits, '-')")
        key = port_name or ""
        if key in names:
            raise fail(f"{where}.name", f"{key!r} is already used by {names[key]}")
        names[key] = where
        protocol = _protocol(raw.get("protocol"), f"{where}.protocol", fail)
        port = _port(raw.get("port"), f"{where}.port", fail)
        if raw.get("appProtocol") is not None:
            _string(raw["appProtocol"], f"{where}.appProtocol", fail)
        ports.append(SlicePort(name=port_name or None, protocol=protocol, port=port))

    return EndpointSliceSpec(namespace=namespace, name=name, service=ServiceName(namespace, service),
                             address_type=address_type, endpoints=endpoints, ports=tuple(ports))


def _slice_endpoint(raw: Any, where: str, version: int, namespace: str, fail: Fail) -> SliceEndpoint:
    check_fields(raw, SLICE_ENDPOINT_FIELDS, where, fail)
    raw_addresses = as_list(raw.get("addresses"), f"{where}.addresses", fail)
    if not 1 <= len(raw_addresses) <= MAX_ENDPOINT_ADDRESSES:
        raise fail(f"{where}.addresses", f"must have 1 to {MAX_ENDPOINT_ADDRESSES} entries, has {len(raw_addresses)}")
    addresses = tuple(_ip(address, f"{where}.addresses[{i}]", fail, version) for i, address in enumerate(raw_addresses))

    conditions = raw.get("conditions")
    conditions = {} if conditions is None else check_fields(conditions, {"ready", "serving", "terminating"},
                                                       f"{where}.conditions", fail)
    ready = _bool(conditions.get("ready"), f"{where}.conditions.ready", fail)
    serving = _bool(conditions.get("serving"), f"{where}.conditions.serving", fail)
    terminating = _bool(conditions.get("terminating"), f"{where}.conditions.terminating", fail)
    ready = True if ready is None else ready
    serving = ready if serving is None else serving
    terminating = False if terminating is None else terminating

    node_name = raw.get("nodeName")
    if node_name is not None and (not isinstance(node_name, str) or len(node_name) > 253
                                  or not DNS1123_SUBDOMAIN.match(node_name)):
        raise fail(f"{where}.nodeName", f"{node_name!r} is not a valid node name (a DNS-1123 subdomain)")

    pod: str | None = None
    ref = raw.get("targetRef")
    if ref is not None:
        check_fields(ref, OBJECT_REFERENCE_FIELDS, f"{where}.targetRef", fail)
        if ref.get("kind") == "Pod":
            pod_name = ref.get("name")
            if pod_name is None or pod_name == "":
                raise fail(f"{where}.targetRef.name", "is required when the target is a Pod")
            if not isinstance(pod_name, str) or len(pod_name) > 253 or not DNS1123_SUBDOMAIN.match(pod_name):
                raise fail(f"{where}.targetRef.name", f"{pod_name!r} is not a valid Pod name")
            pod_namespace = ref.get("namespace") or namespace
            if not isinstance(pod_namespace, str) or not DNS1123_LABEL.match(pod_namespace):
                raise fail(f"{where}.targetRef.namespace", f"{pod_namespace!r} is not a valid namespace name")
            pod = f"{pod_namespace}/{pod_name}"

    return SliceEndpoint(addresses=addresses, ready=ready, serving=serving, terminating=terminating,
                         node_name=node_name, pod=pod)
