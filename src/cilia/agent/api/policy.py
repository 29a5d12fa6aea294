"""GET /v1/policy (the policies in force, their rule counts and the endpoints they select) and
POST /v1/policy/trace (the verdict policy gives a connection, and why)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from fastapi import APIRouter

from cilia.agent.errors import invalid
from cilia.api.models import PolicyList, PolicySummary, TraceRequest
from cilia.policy.rules import PolicyRef
from cilia.policy.trace import TraceResult

TraceSide = tuple[str | None, list[str], str | None]  # pod (ns/name), labels, IP


class RuleCatalog(Protocol):
    """The policy repository: which policies are in force, and their rules."""

    @property
    def revision(self) -> int: ...

    def refs(self) -> list[PolicyRef]: ...

    def rules_of(self, ref: PolicyRef) -> Sequence[object]: ...


class PolicyQueries(Protocol):
    """The policy engine's answers about endpoints."""

    def selecting(self, ref: PolicyRef) -> list[int]: ...

    def trace(self, src: TraceSide, dst: TraceSide, protocol: str, port: int) -> TraceResult: ...


def make_router(catalog: RuleCatalog, queries: PolicyQueries) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/policy", response_model=PolicyList)
    def list_policy() -> PolicyList:
        return PolicyList(revision=catalog.revision, policies=[
            PolicySummary(kind=ref.kind, namespace=ref.namespace, name=ref.name,
                          rules=len(catalog.rules_of(ref)), selects_endpoints=queries.selecting(ref))
            for ref in catalog.refs()])

    @router.post("/policy/trace")
    def policy_trace(request: TraceRequest) -> dict[str, Any]:
        try:
            result = queries.trace((request.src_pod, request.src_labels, request.src_ip),
                                   (request.dst_pod, request.dst_labels, request.dst_ip),
                                   request.protocol, request.dport)
        except (LookupError, ValueError) as exc:
            raise invalid(f"policy trace: {exc}") from exc
        return result.to_dict()

    return router
