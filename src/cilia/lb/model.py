"""The load-balancing model: parsed Services and EndpointSlices, and the frontends/backends the
datapath is programmed with. Pure data; no kernel, no store.

A Kubernetes Service becomes one `LbFrontend` per (address, port, protocol) it is reachable on:
its ClusterIPs, its nodePort on each node address, its LoadBalancer ingress IPs and its
externalIPs. Each frontend lists the backends (pod address + resolved target port) with a state.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum

from cilia import ipproto

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds: Kubernetes' default for sessionAffinity ClientIP


class L4Protocol(StrEnum):
    TCP = "TCP"
    UDP = "UDP"

    @property
    def number(self) -> int:
        """The IP protocol number (cilia.ipproto)."""
        return ipproto.number_of(self.value)

    @classmethod
    def of_number(cls, number: int) -> L4Protocol | None:
        """TCP for 6, UDP for 17; None for a protocol services do not use."""
        name = ipproto.name_of(number)
        return cls(name) if name in cls.__members__ else None


class ServiceType(StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"


class FrontendType(StrEnum):
    """How a frontend address is reached; only ClusterIP frontends are in-cluster only."""

    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"
    EXTERNAL_IP = "ExternalIP"

    @property
    def external(self) -> bool:
        """Reachable from outside the cluster: selected by Maglev, subject to externalTrafficPolicy."""
        return self is not FrontendType.CLUSTER_IP


class BackendState(StrEnum):
    ACTIVE = "active"  # takes new connections
    TERMINATING = "terminating"  # no new connections; established ones finish
    QUARANTINED = "quarantined"  # no new connections (operator or health check took it out)

    @property
    def selectable(self) -> bool:
        return self is BackendState.ACTIVE


@dataclass(frozen=True, order=True)
class ServiceName:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ServicePort:
    """One entry of `spec.ports`. `target_port` is a number, or a container port name."""

    name: str | None
    protocol: L4Protocol
    port: int
    target_port: int | str
    node_port: int | None = None


@dataclass(frozen=True)
class ServiceSpec:
    """A validated `v1 Service`."""

    name: ServiceName
    type: ServiceType
    cluster_ips: tuple[IPAddress, ...]  # as given; empty when omitted (the agent allocates) or headless
    ports: tuple[ServicePort, ...]
    headless: bool = False  # clusterIP: None; cilia leaves it alone
    selector: dict[str, str] | None = None  # None: backends come only from EndpointSlices
    external_ips: tuple[IPAddress, ...] = ()
    load_balancer_ips: tuple[IPAddress, ...] = ()  # status.loadBalancer.ingress[].ip
    affinity_timeout: int | None = None  # seconds when sessionAffinity is ClientIP, else None
    external_traffic_local: bool = False  # externalTrafficPolicy: Local
    internal_traffic_local: bool = False  # internalTrafficPolicy: Local


@dataclass(frozen=True)
class SliceEndpoint:
    """One entry of an EndpointSlice's `endpoints`, with Kubernetes' condition defaults applied
    (ready: unset means true; serving: unset means ready; terminating: unset means false)."""

    addresses: tuple[IPAddress, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    pod: str | None = None  # targetRef "namespace/name" when the target is a Pod

    @property
    def state(self) -> BackendState | None:
        """None: not a backend at all (not ready, not terminating)."""
        if self.ready and not self.terminating:
            return BackendState.ACTIVE
        if self.terminating and self.serving:
            return BackendState.TERMINATING
        return None


@dataclass(frozen=True)
class SlicePort:
    name: str | None
    protocol: L4Protocol
    port: int


@dataclass(frozen=True)
class EndpointSliceSpec:
    """A validated `discovery.k8s.io/v1 EndpointSlice`; `service` from label kubernetes.io/service-name."""

    namespace: str
    name: str
    service: ServiceName
    address_type: str  # "IPv4" or "IPv6"
    endpoints: tuple[SliceEndpoint, ...]
    ports: tuple[SlicePort, ...]


@dataclass(frozen=True, order=True)
class Backend:
    address: IPAddress
    port: int
    state: BackendState = BackendState.ACTIVE
    weight: int = 1
    node: str | None = None
    pod: str | None = None  # "namespace/name"


@dataclass(frozen=True, order=True)
class FrontendKey:
    address: IPAddress
    port: int
    protocol: L4Protocol


@dataclass(frozen=True)
class LbFrontend:
    """What the datapath is programmed with for one frontend address:port/protocol."""

    key: FrontendKey
    type: FrontendType
    service: ServiceName
    port_name: str | None
    backends: tuple[Backend, ...] = ()
    affinity_timeout: int | None = None
    local_only: bool = False  # traffic policy Local: only backends on this node
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def selectable(self) -> tuple[Backend, ...]:
        return tuple(b for b in self.backends if b.state.selectable)
