"""/v1/endpoints (create, list, get, delete, per-endpoint config, by container) and /v1/gc.

Handlers are plain functions: FastAPI runs them in its threadpool, so blocking netlink and bpf
calls do not stall the event loop; the endpoint engine serialises them.
"""

from __future__ import annotations

from typing import Protocol

from fastapi import APIRouter

from cilia.api.errors import invalid, not_found
from cilia.api.models import (
    Endpoint,
    EndpointConfigRequest,
    EndpointCreateRequest,
    EndpointPolicyStatus,
    GcRequest,
    GcResult,
)


class Endpoints(Protocol):
    """The endpoint engine, as the API uses it. `get` raises a 404 ApiError for an unknown id."""

    def create(self, request: EndpointCreateRequest) -> Endpoint: ...

    def list_endpoints(self) -> list[Endpoint]: ...

    def get(self, endpoint_id: int) -> Endpoint: ...

    def delete(self, endpoint_id: int) -> bool: ...

    def view_by_container(self, container_id: str, ifname: str) -> Endpoint | None: ...

    def delete_by_container(self, container_id: str, ifname: str) -> bool: ...

    def gc(self, valid: set[tuple[str, str]]) -> list[int]: ...


class EndpointPolicy(Protocol):
    """Each endpoint's policy status, and its audit-mode override (answers once installed)."""

    def status(self, endpoint_id: int) -> EndpointPolicyStatus | None: ...

    def set_endpoint_audit(self, endpoint_id: int, audit: bool | None) -> None: ...


def make_router(endpoints: Endpoints, policy: EndpointPolicy) -> APIRouter:
    router = APIRouter(prefix="/v1")

    def with_policy(endpoint: Endpoint) -> Endpoint:
        return endpoint.model_copy(update={"policy": policy.status(endpoint.id)})

    @router.post("/endpoints", response_model=Endpoint, status_code=201)
    def create_endpoint(request: EndpointCreateRequest) -> Endpoint:
        return with_policy(endpoints.create(request))

    @router.get("/endpoints", response_model=list[Endpoint])
    def list_endpoints() -> list[Endpoint]:
        return [with_policy(e) for e in endpoints.list_endpoints()]

    @router.get("/endpoints/{endpoint_id}", response_model=Endpoint)
    def get_endpoint(endpoint_id: int) -> Endpoint:
        return with_policy(endpoints.get(endpoint_id))

    @router.patch("/endpoints/{endpoint_id}/config", response_model=Endpoint)
    def configure_endpoint(endpoint_id: int, request: EndpointConfigRequest) -> Endpoint:
        endpoints.get(endpoint_id)  # 404 when it does not exist
        policy.set_endpoint_audit(endpoint_id, request.policy_audit_mode)
        return with_policy(endpoints.get(endpoint_id))

    @router.delete("/endpoints/{endpoint_id}", status_code=204)
    def delete_endpoint(endpoint_id: int) -> None:
        if not endpoints.delete(endpoint_id):
            raise not_found(f"endpoint {endpoint_id}")

    @router.get("/endpoints/by-container/{container_id}", response_model=Endpoint)
    def get_by_container(container_id: str, ifname: str = "eth0") -> Endpoint:
        found = endpoints.view_by_container(container_id, ifname)
        if found is None:
            raise not_found(f"endpoint of container {container_id!r} interface {ifname!r}")
        return found

    @router.delete("/endpoints/by-container/{container_id}", status_code=204)
    def delete_by_container(container_id: str, ifname: str = "eth0") -> None:
        if not endpoints.delete_by_container(container_id, ifname):
            raise not_found(f"endpoint of container {container_id!r} interface {ifname!r}")

    @router.post("/gc", response_model=GcResult)
    def gc(request: GcRequest) -> GcResult:
        valid: set[tuple[str, str]] = set()
        for index, attachment in enumerate(request.valid_attachments):
            container_id = attachment.get("containerID")
            if not container_id:
                raise invalid(f"gc request: valid_attachments[{index}]: field 'containerID' is required")
            valid.add((container_id, attachment.get("ifname", "eth0")))
        return GcResult(removed=endpoints.gc(valid))

    return router
