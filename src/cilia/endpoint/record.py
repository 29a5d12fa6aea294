"""EndpointRecord: everything the agent persists about one endpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cilia.api.models import Endpoint, EndpointState


@dataclass(frozen=True)
class EndpointRecord:
    id: int
    container_id: str
    ifname: str
    netns: str
    host_ifname: str
    host_ifindex: int
    mac: str
    host_mac: str
    ipv4: str | None
    ipv6: str | None
    gateway_ipv4: str | None
    gateway_ipv6: str | None
    pod_namespace: str
    pod_name: str
    pod_uid: str
    infra_container_id: str
    identity: int
    identity_labels: list[str]
    state: EndpointState
    created_at: float
    extra_labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EndpointRecord:
        return cls(**{**data, "state": EndpointState(data["state"])})

    def to_api(self) -> Endpoint:
        return Endpoint(
            id=self.id,
            container_id=self.container_id,
            ifname=self.ifname,
            netns=self.netns,
            host_ifname=self.host_ifname,
            host_ifindex=self.host_ifindex,
            mac=self.mac,
            host_mac=self.host_mac,
            ipv4=self.ipv4,
            ipv6=self.ipv6,
            gateway_ipv4=self.gateway_ipv4,
            gateway_ipv6=self.gateway_ipv6,
            pod_namespace=self.pod_namespace,
            pod_name=self.pod_name,
            pod_uid=self.pod_uid,
            identity=self.identity,
            labels=list(self.identity_labels),
            state=self.state,
            created_at=self.created_at,
        )
