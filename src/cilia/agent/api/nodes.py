"""GET /v1/nodes: the cluster's nodes as this agent knows them (itself first when the kvstore is
local; every registered node with `--kvstore etcd`)."""

from __future__ import annotations

from typing import Protocol

from fastapi import APIRouter

from cilia.api.models import ClusterNode


class NodeSource(Protocol):
    def cluster_nodes(self) -> list[ClusterNode]: ...


def make_router(source: NodeSource) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/nodes", response_model=list[ClusterNode])
    def list_nodes() -> list[ClusterNode]:
        return source.cluster_nodes()

    return router
