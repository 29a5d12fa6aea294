"""/v1/services: services with their frontends and backends, a service's Maglev table, and a
backend's state (active / quarantined)."""

from __future__ import annotations

import ipaddress
from typing import Any, Protocol

from fastapi import APIRouter

from cilia.api.errors import invalid, not_found
from cilia.api.models import BackendStateRequest
from cilia.lb.model import BackendState, ServiceName

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Services(Protocol):
    """The load-balancing engine, as the API uses it. `maglev` and `set_backend_state` raise
    LookupError for an unknown service or backend."""

    def services(self) -> list[dict[str, Any]]: ...

    def maglev(self, name: ServiceName) -> list[dict[str, Any]]: ...

    def set_backend_state(self, service: ServiceName, address: IPAddress, port: int, state: BackendState) -> None: ...


def make_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/services")
    def list_services() -> list[dict[str, Any]]:
        return services.services()

    @router.get("/services/{namespace}/{name}")
    def get_service(namespace: str, name: str) -> dict[str, Any]:
        for row in services.services():
            if row["namespace"] == namespace and row["name"] == name:
                return row
        raise not_found(f"service {namespace}/{name}")

    @router.get("/services/{namespace}/{name}/maglev")
    def get_maglev(namespace: str, name: str) -> list[dict[str, Any]]:
        try:
            return services.maglev(ServiceName(namespace, name))
        except LookupError as exc:
            raise not_found(str(exc)) from exc

    @router.patch("/services/{namespace}/{name}/backends")
    def set_backend_state(namespace: str, name: str, request: BackendStateRequest) -> dict[str, Any]:
        try:
            address = ipaddress.ip_address(request.address)
            services.set_backend_state(ServiceName(namespace, name), address, request.port,
                                       BackendState(request.state))
        except ValueError as exc:
            raise invalid(f"service {namespace}/{name} backend: {exc}") from exc
        except LookupError as exc:
            raise not_found(str(exc)) from exc
        return get_service(namespace, name)

    return router
