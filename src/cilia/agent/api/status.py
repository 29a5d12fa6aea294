"""GET /v1/healthz and GET /v1/status: the node's agent at a glance."""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import APIRouter

from cilia.api.models import NodeStatus


class StatusSource(Protocol):
    def status(self) -> NodeStatus: ...


def make_router(node: str, source: StatusSource) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "node": node}

    @router.get("/status", response_model=NodeStatus)
    def status() -> NodeStatus:
        return source.status()

    return router
