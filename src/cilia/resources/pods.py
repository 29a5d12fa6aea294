"""A stored Pod object read once into the facts every engine uses: identity labels, container ports, readiness.

The object was validated when applied (cilia.resources.validate refuses wrongly typed ports,
conditions and service accounts), so reading it here cannot fail on types; absent fields take
Kubernetes' defaults (namespace `default`, service account `default`, protocol TCP).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cilia import ipproto


@dataclass(frozen=True)
class ContainerPort:
    name: str  # "" when the port has no name
    protocol: int  # IP protocol number
    port: int


@dataclass(frozen=True)
class PodFacts:
    namespace: str
    name: str
    labels: Mapping[str, str]
    service_account: str
    ports: tuple[ContainerPort, ...]
    ready: bool  # unless a Ready condition says False
    terminating: bool  # once it has a deletionTimestamp

    def named_ports(self) -> tuple[ContainerPort, ...]:
        return tuple(port for port in self.ports if port.name)


def read_pod(pod: Mapping[str, Any]) -> PodFacts:
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    conditions = (pod.get("status") or {}).get("conditions") or []
    ports = tuple(
        ContainerPort(str(port.get("name") or ""), _protocol(port.get("protocol")), int(port["containerPort"]))
        for container in spec.get("containers") or []
        for port in container.get("ports") or []
    )
    return PodFacts(
        namespace=metadata.get("namespace") or "default",
        name=metadata.get("name", ""),
        labels=dict(metadata.get("labels") or {}),
        service_account=spec.get("serviceAccountName") or "default",
        ports=ports,
        ready=not any(c.get("type") == "Ready" and c.get("status") == "False" for c in conditions),
        terminating=bool(metadata.get("deletionTimestamp")),
    )


def _protocol(name: object) -> int:
    text = str(name or "TCP")
    return ipproto.number_of(text) if ipproto.is_known(text) else ipproto.TCP
