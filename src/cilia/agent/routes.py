"""The agent's HTTP routes (served on a unix socket; FastAPI publishes the OpenAPI description)."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from cilia.agent.errors import ApiError, invalid, not_found
from cilia.api.models import (
    AgentConfigPatch,
    AgentConfigView,
    ApplyRequest,
    ApplyResult,
    ApplyResultItem,
    BackendStateRequest,
    Endpoint,
    EndpointConfigRequest,
    EndpointCreateRequest,
    GcRequest,
    GcResult,
    Identity,
    NodeStatus,
    PolicyList,
    PolicySummary,
    TraceRequest,
)
from cilia.lb.model import BackendState, ServiceName

if TYPE_CHECKING:
    from cilia.agent.daemon import Agent


def api_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(status_code=exc.status, content=exc.body().model_dump())


def make_router(agent: Agent) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "node": agent.config.node}

    @router.get("/status", response_model=NodeStatus)
    def status() -> NodeStatus:
        return agent.status()

    # Endpoints. Handlers are plain functions: FastAPI runs them in its threadpool, so blocking
    # netlink and bpf calls do not stall the event loop; the manager serialises them.
    def with_policy(endpoint: Endpoint) -> Endpoint:
        return endpoint.model_copy(update={"policy": agent.policy.status(endpoint.id)})

    @router.post("/endpoints", response_model=Endpoint, status_code=201)
    def create_endpoint(request: EndpointCreateRequest) -> Endpoint:
        return with_policy(agent.endpoints.create(request))

    @router.get("/endpoints", response_model=list[Endpoint])
    def list_endpoints() -> list[Endpoint]:
        return [with_policy(e) for e in agent.endpoints.list_endpoints()]

    @router.get("/endpoints/{endpoint_id}", response_model=Endpoint)
    def get_endpoint(endpoint_id: int) -> Endpoint:
        return with_policy(agent.endpoints.get(endpoint_id))

    @router.patch("/endpoints/{endpoint_id}/config", response_model=Endpoint)
    def configure_endpoint(endpoint_id: int, request: EndpointConfigRequest) -> Endpoint:
        agent.endpoints.get(endpoint_id)  # 404 when it does not exist
        agent.policy.set_endpoint_audit(endpoint_id, request.policy_audit_mode)
        return with_policy(agent.endpoints.get(endpoint_id))

    # Agent settings that change at runtime.
    @router.get("/config", response_model=AgentConfigView)
    def get_config() -> AgentConfigView:
        return agent.policy.config()

    @router.patch("/config", response_model=AgentConfigView)
    def patch_config(patch: AgentConfigPatch) -> AgentConfigView:
        return agent.policy.patch_config(patch)

    # Policy.
    @router.get("/policy", response_model=PolicyList)
    def list_policy() -> PolicyList:
        repository = agent.policy.repository
        return PolicyList(revision=repository.revision, policies=[
            PolicySummary(kind=ref.kind, namespace=ref.namespace, name=ref.name,
                          rules=len(repository.rules_of(ref)), selects_endpoints=agent.policy.selecting(ref))
            for ref in repository.refs()])

    @router.post("/policy/trace")
    def policy_trace(request: TraceRequest) -> dict[str, Any]:
        try:
            result = agent.policy.trace((request.src_pod, request.src_labels, request.src_ip),
                                        (request.dst_pod, request.dst_labels, request.dst_ip),
                                        request.protocol, request.dport)
        except (LookupError, ValueError) as exc:
            raise invalid(f"policy trace: {exc}") from exc
        return result.to_dict()

    @router.get("/bpf/policy/{endpoint_id}")
    def bpf_policy(endpoint_id: int) -> dict[str, Any]:
        agent.endpoints.get(endpoint_id)
        return agent.bpf_policy(endpoint_id)

    @router.delete("/endpoints/{endpoint_id}", status_code=204)
    def delete_endpoint(endpoint_id: int) -> None:
        if not agent.endpoints.delete(endpoint_id):
            raise not_found(f"endpoint {endpoint_id}")

    @router.get("/endpoints/by-container/{container_id}", response_model=Endpoint)
    def get_by_container(container_id: str, ifname: str = "eth0") -> Endpoint:
        record = agent.endpoints.find_by_container(container_id, ifname)
        if record is None:
            raise not_found(f"endpoint of container {container_id!r} interface {ifname!r}")
        return record.to_api()

    @router.delete("/endpoints/by-container/{container_id}", status_code=204)
    def delete_by_container(container_id: str, ifname: str = "eth0") -> None:
        if not agent.endpoints.delete_by_container(container_id, ifname):
            raise not_found(f"endpoint of container {container_id!r} interface {ifname!r}")

    @router.post("/gc", response_model=GcResult)
    def gc(request: GcRequest) -> GcResult:
        valid: set[tuple[str, str]] = set()
        for index, attachment in enumerate(request.valid_attachments):
            container_id = attachment.get("containerID")
            if not container_id:
                raise invalid(f"gc request: valid_attachments[{index}]: field 'containerID' is required")
            valid.add((container_id, attachment.get("ifname", "eth0")))
        return GcResult(removed=agent.endpoints.gc(valid))

    # Identities.
    @router.get("/identities", response_model=list[Identity])
    def list_identities() -> list[Identity]:
        return agent.list_identities()

    @router.get("/identities/{identity_id}", response_model=Identity)
    def get_identity(identity_id: int) -> Identity:
        for identity in agent.list_identities():
            if identity.id == identity_id:
                return identity
        raise not_found(f"identity {identity_id}")

    # Kubernetes-shaped objects.
    @router.post("/resources/apply", response_model=ApplyResult)
    def apply(request: ApplyRequest) -> ApplyResult:
        return _outcomes(agent.apply_objects(request.objects))

    @router.post("/resources/delete", response_model=ApplyResult)
    def delete(request: ApplyRequest) -> ApplyResult:
        return _outcomes(agent.delete_objects(request.objects))

    @router.get("/resources")
    def list_resources(kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return agent.resources.list(kind, namespace)

    # Services.
    def service_name(namespace: str, name: str) -> ServiceName:
        return ServiceName(namespace, name)

    @router.get("/services")
    def list_services() -> list[dict[str, Any]]:
        return agent.services.services()

    @router.get("/services/{namespace}/{name}")
    def get_service(namespace: str, name: str) -> dict[str, Any]:
        for row in agent.services.services():
            if row["namespace"] == namespace and row["name"] == name:
                return row
        raise not_found(f"service {namespace}/{name}")

    @router.get("/services/{namespace}/{name}/maglev")
    def get_maglev(namespace: str, name: str) -> list[dict[str, Any]]:
        try:
            return agent.services.maglev(service_name(namespace, name))
        except LookupError as exc:
            raise not_found(str(exc)) from exc

    @router.patch("/services/{namespace}/{name}/backends")
    def set_backend_state(namespace: str, name: str, request: BackendStateRequest) -> dict[str, Any]:
        try:
            address = ipaddress.ip_address(request.address)
            agent.services.set_backend_state(service_name(namespace, name), address, request.port,
                                             BackendState(request.state))
        except ValueError as exc:
            raise invalid(f"service {namespace}/{name} backend: {exc}") from exc
        except LookupError as exc:
            raise not_found(str(exc)) from exc
        return get_service(namespace, name)

    @router.get("/bpf/lb")
    def bpf_lb() -> list[dict[str, Any]]:
        return agent.datapath.dump_lb()

    # BPF map dumps (read through the agent so the CLI needs no bpf privileges or layout knowledge).
    @router.get("/bpf/ct")
    def bpf_ct() -> list[dict[str, Any]]:
        return agent.bpf_ct()

    @router.get("/bpf/ipcache")
    def bpf_ipcache() -> list[dict[str, Any]]:
        return agent.bpf_ipcache()

    @router.get("/bpf/endpoints")
    def bpf_endpoints() -> list[dict[str, Any]]:
        return agent.bpf_endpoints()

    @router.get("/bpf/metrics")
    def bpf_metrics() -> list[dict[str, Any]]:
        return agent.bpf_metrics()

    return router


def _outcomes(outcomes: list[Any]) -> ApplyResult:
    if isinstance(outcomes, ApiError):
        raise outcomes
    return ApplyResult(
        items=[
            ApplyResultItem(kind=o.kind, namespace=o.namespace, name=o.name, action=o.action) for o in outcomes
        ]
    )
