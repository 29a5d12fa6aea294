"""GET/PATCH /v1/config: the agent's settings that change at runtime (policy enforcement mode,
audit mode, localhost traffic)."""

from __future__ import annotations

from typing import Protocol

from fastapi import APIRouter

from cilia.api.models import AgentConfigPatch, AgentConfigView


class RuntimeSettings(Protocol):
    def config(self) -> AgentConfigView: ...

    def patch_config(self, patch: AgentConfigPatch) -> AgentConfigView: ...


def make_router(settings: RuntimeSettings) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/config", response_model=AgentConfigView)
    def get_config() -> AgentConfigView:
        return settings.config()

    @router.patch("/config", response_model=AgentConfigView)
    def patch_config(patch: AgentConfigPatch) -> AgentConfigView:
        return settings.patch_config(patch)

    return router
