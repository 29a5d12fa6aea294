"""Request and response models of the agent's local API, shared by the agent, CLI, CNI plugin and tests."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cilia.endpoint.record import EndpointRecord
from cilia.endpoint.state import EndpointState as EndpointState  # re-exported: the wire shows it


class Strict(BaseModel):
    """Unknown fields are an error: a typo in a request must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ErrorBody(Strict):
    """Every non-2xx answer of the API carries this body.

    `code` follows the CNI spec's error codes (`cilia.cni.spec`) where one fits, so the plugin can
    pass it through: 3 unknown container, 4 invalid environment (CNI_ARGS), 7 invalid network
    config, 11 try again later; 100+ are cilia's own (`cilia.api.errors`: 101 IPAM exhausted,
    102 datapath error, 103 netlink error, 104 invalid object, 105 not found).
    """

    code: int
    message: str
    details: str = ""


class EndpointCreateRequest(Strict):
    """What the CNI plugin sends on ADD."""

    container_id: str = Field(min_length=1)
    netns: str = Field(min_length=1, description="path of the container's network namespace")
    ifname: str = Field(default="eth0", min_length=1, max_length=15)
    pod_namespace: str = "default"
    pod_name: str = ""
    pod_uid: str = ""
    infra_container_id: str = ""
    requested_ipv4: str | None = None
    requested_ipv6: str | None = None
    requested_mac: str | None = None
    mtu: int | None = Field(default=None, ge=576, le=65535)
    labels: dict[str, str] = Field(default_factory=dict, description="extra labels (lab pods without a Pod object)")


class EndpointPolicyStatus(Strict):
    """Policy of one endpoint: enforcement per direction ("enabled", "disabled", "audit", "failed")."""

    ingress: str
    egress: str
    audit: bool = False
    map_entries: int = 0
    selected_by: list[str] = Field(default_factory=list)
    error: str = ""


class Endpoint(EndpointRecord):
    """An endpoint as the API shows it: its record (the fields are declared once, in
    cilia.endpoint.record) plus what is not persisted: the state machine's state, the reason for
    it (why an endpoint is not-ready), and the policy status."""

    model_config = ConfigDict(frozen=False, extra="forbid")

    state: EndpointState
    state_reason: str = ""
    policy: EndpointPolicyStatus | None = None

    @classmethod
    def of(cls, record: EndpointRecord, state: EndpointState, reason: str = "",
           policy: EndpointPolicyStatus | None = None) -> Endpoint:
        return cls(**record.fields(), state=state, state_reason=reason, policy=policy)


class EndpointConfigRequest(Strict):
    """Per-endpoint settings; null puts a setting back to the agent's default."""

    policy_audit_mode: bool | None = None


class AgentConfigView(Strict):
    """The agent's runtime-changeable settings (PATCH /v1/config)."""

    policy_enforcement: str = Field(pattern="^(default|always|never)$")
    policy_audit_mode: bool
    allow_localhost: str = Field(pattern="^(auto|always|policy)$")


class AgentConfigPatch(Strict):
    policy_enforcement: str | None = Field(default=None, pattern="^(default|always|never)$")
    policy_audit_mode: bool | None = None
    allow_localhost: str | None = Field(default=None, pattern="^(auto|always|policy)$")


class PolicySummary(Strict):
    kind: str
    namespace: str
    name: str
    rules: int
    selects_endpoints: list[int]


class PolicyList(Strict):
    revision: int
    policies: list[PolicySummary]


class PolicyWaitResult(Strict):
    """GET /v1/policy/wait: has every endpoint's installed policy reached `revision`?"""

    revision: int
    current: int = Field(description="the newest policy revision")
    reached: bool = Field(description="no endpoint is still below `revision`")
    pending: list[int] = Field(default_factory=list, description="endpoints still regenerating towards it")
    not_ready: dict[int, str] = Field(default_factory=dict,
                                      description="endpoints whose policy could not be installed, and why "
                                                  "(their traffic is dropped)")

    @property
    def ok(self) -> bool:
        return self.reached and not self.not_ready


class TraceRequest(Strict):
    """Who talks to whom: each side by pod (`ns/name`), by labels (`app=web`, `k8s:team=a`) or by IP."""

    src_pod: str | None = None
    src_labels: list[str] = Field(default_factory=list)
    src_ip: str | None = None
    dst_pod: str | None = None
    dst_labels: list[str] = Field(default_factory=list)
    dst_ip: str | None = None
    dport: int = Field(ge=0, le=65535)
    protocol: str = Field(default="TCP", pattern="^(TCP|UDP|SCTP|ICMP|ICMPV6|tcp|udp|sctp|icmp|icmpv6)$")


class GcRequest(Strict):
    """CNI GC: every attachment not listed here may be cleaned up."""

    valid_attachments: list[dict[str, str]]


class GcResult(Strict):
    removed: list[int]


class Identity(Strict):
    id: int
    labels: list[str]
    reserved: bool = False
    references: int = 0


class ApplyRequest(Strict):
    """Kubernetes-shaped objects, as kubectl would take them (one YAML document each)."""

    objects: list[dict[str, Any]]


class ApplyResultItem(Strict):
    kind: str
    namespace: str | None
    name: str
    action: str  # created | configured | unchanged | deleted | not-found


class ApplyResult(Strict):
    items: list[ApplyResultItem]
    # the policy revision once this change was accepted: `cilia policy wait --revision N`
    revision: int | None = None


class KvstoreStatus(Strict):
    """The kvstore as this agent sees it (`cilia status`): `local` is the embedded store."""

    backend: Literal["local", "etcd"]
    reachable: bool
    endpoint: str = ""  # the member this agent talks to now
    member_id: str = ""
    leader_id: str = ""
    revision: int = 0
    lag: int = 0  # raft entries the member has committed but not yet applied
    lease: bool = False  # the node's lease is held (its records are live)
    pending: bool = False  # local changes (node record, ipcache entries) not yet written
    error: str = ""


class ClusterNode(Strict):
    """One node of the cluster (`GET /v1/nodes`, `cilia node list`)."""

    name: str
    local: bool
    ipv4: str | None
    ipv6: str | None
    pod_cidrs: list[str]
    routing_mode: str
    health: str
    health_reason: str = ""
    age_seconds: float  # since the node registered (its record's `updated`)


class NodeStatus(Strict):
    node: str
    version: str
    uptime_seconds: float
    endpoints: int
    identities: int
    ipv4_pod_cidr: str | None
    ipv6_pod_cidr: str | None
    datapath: dict[str, Any]
    restored_endpoints: int
    flows_buffered: int
    events_lost: int
    services: int = 0
    # LB map writes of the start-up sync: 0 when a restarted agent found the maps as it wanted them
    service_sync_operations: int = 0
    kvstore: KvstoreStatus | None = None
    cluster_nodes: list[ClusterNode] = Field(default_factory=list)
    remote_endpoints: int = 0  # endpoint IPs of other nodes in this node's ipcache


class BackendStateRequest(Strict):
    """Set one backend of a service active again, or take it out of selection (quarantined)."""

    address: str
    port: int = Field(ge=1, le=65535)
    state: Literal["active", "quarantined"]
