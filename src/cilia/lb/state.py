"""Desired load-balancing state, computed purely: a Service, its EndpointSlices (or its selector
over the pods cilia knows) and the node's addresses -> the frontends the datapath must serve.

Kubernetes semantics followed here:
- EndpointSlices, when a service has any, are the backends; otherwise the selector picks ready
  pods (terminating ones stay as terminating backends; pods without an address are skipped).
- A slice port belongs to a service port by name and protocol; a named targetPort resolves per
  pod through its containers' ports (a pod without that port is no backend).
- Only the first address of a slice endpoint is used (they are fungible).
- internalTrafficPolicy Local limits ClusterIP frontends, externalTrafficPolicy Local the
  external ones, to backends on this node; a slice endpoint without nodeName is not local.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cilia.lb.model import (
    Backend,
    BackendState,
    EndpointSliceSpec,
    FrontendKey,
    FrontendType,
    IPAddress,
    L4Protocol,
    LbFrontend,
    ServicePort,
    ServiceSpec,
)


@dataclass(frozen=True)
class PodInfo:
    """What the selector path needs of a pod: its labels, addresses, node, readiness, named ports."""

    namespace: str
    name: str
    labels: dict[str, str]
    addresses: tuple[IPAddress, ...]
    node: str | None
    ready: bool = True
    terminating: bool = False
    named_ports: dict[tuple[str, L4Protocol], int] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def selected_by(self, selector: dict[str, str]) -> bool:
        return all(self.labels.get(k) == v for k, v in selector.items())

    @property
    def state(self) -> BackendState | None:
        """As Kubernetes publishes it: a terminating pod still serving (ready) finishes its
        connections; one that stopped serving is no backend at all."""
        if self.terminating:
            return BackendState.TERMINATING if self.ready else None
        return BackendState.ACTIVE if self.ready else None


def _same_family(a: IPAddress, b: IPAddress) -> bool:
    return a.version == b.version


def _slice_port(port: ServicePort, service: ServiceSpec, slice_: EndpointSliceSpec) -> int | None:
    single = len(service.ports) == 1
    for candidate in slice_.ports:
        if candidate.protocol is not port.protocol:
            continue
        if candidate.name == port.name or (single and candidate.name in (None, "")) or (
                single and port.name in (None, "")):
            return candidate.port
    return None


def backends_for(service: ServiceSpec, port: ServicePort, slices: Sequence[EndpointSliceSpec],
                 pods: Iterable[PodInfo]) -> list[Backend]:
    """Every backend of one service port, in either family, with its state."""
    found: dict[tuple[IPAddress, int], Backend] = {}
    if slices:
        for slice_ in sorted(slices, key=lambda s: s.name):
            slice_port = _slice_port(port, service, slice_)
            if slice_port is None:
                continue
            for endpoint in slice_.endpoints:
                state = endpoint.state
                if state is None or not endpoint.addresses:
                    continue
                address = endpoint.addresses[0]
                found.setdefault((address, slice_port), Backend(address, slice_port, state, 1, endpoint.node_name,
                                                                endpoint.pod))
    elif service.selector is not None:
        for pod in pods:
            if pod.namespace != service.name.namespace or not pod.selected_by(service.selector):
                continue
            state = pod.state
            if state is None:
                continue
            if isinstance(port.target_port, int):
                number: int | None = port.target_port
            else:
                number = pod.named_ports.get((port.target_port, port.protocol))
            if number is None:
                continue
            for address in pod.addresses:
                found.setdefault((address, number), Backend(address, number, state, 1, pod.node, pod.key))
    return sorted(found.values(), key=lambda b: (b.address.version, b.address, b.port))


def frontends_for(service: ServiceSpec, cluster_ips: Sequence[IPAddress], slices: Sequence[EndpointSliceSpec],
                  pods: Iterable[PodInfo], node: str, node_addresses: Sequence[IPAddress]) -> list[LbFrontend]:
    """All frontends of a service. Headless services have none: cilia leaves them alone."""
    if service.headless:
        return []
    pod_list = list(pods)
    frontends: list[LbFrontend] = []
    for port in service.ports:
        backends = backends_for(service, port, slices, pod_list)
        addresses: list[tuple[IPAddress, int, FrontendType]] = [(ip, port.port, FrontendType.CLUSTER_IP)
                                                                for ip in cluster_ips]
        if port.node_port:
            addresses += [(ip, port.node_port, FrontendType.NODE_PORT) for ip in node_addresses]
        addresses += [(ip, port.port, FrontendType.LOAD_BALANCER) for ip in service.load_balancer_ips]
        addresses += [(ip, port.port, FrontendType.EXTERNAL_IP) for ip in service.external_ips]
        for address, number, kind in addresses:
            local_only = service.internal_traffic_local if kind is FrontendType.CLUSTER_IP \
                else service.external_traffic_local
            chosen = tuple(b for b in backends if _same_family(b.address, address)
                           and (not local_only or b.node == node))
            frontends.append(LbFrontend(
                key=FrontendKey(address, number, port.protocol), type=kind, service=service.name,
                port_name=port.name, backends=chosen, affinity_timeout=service.affinity_timeout,
                local_only=local_only))
    return frontends

