"""GET /v1/policy (the policies in force, their rule counts and the endpoints they select),
GET /v1/policy/wait (until every endpoint's installed policy reflects a revision) and
POST /v1/policy/trace (the verdict policy gives a connection, and why)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from fastapi import APIRouter

from cilia.api.errors import invalid
from cilia.api.models import PolicyList, PolicySummary, PolicyWaitResult, TraceRequest
from cilia.policy.rules import PolicyRef
from cilia.policy.trace import TraceResult

TraceSide = tuple[str | None, list[str], str | None]  # pod (ns/name), labels, IP
MAX_WAIT_SECONDS = 600.0


class RuleCatalog(Protocol):
    """Which policies are in force, their rules, and the policy revision."""

    @property
    def revision(self) -> int: ...

    def refs(self) -> list[PolicyRef]: ...

    def rules_of(self, ref: PolicyRef) -> Sequence[object]: ...


class PolicyQueries(Protocol):
    """The policy engine's answers about endpoints."""

    def selecting(self, ref: PolicyRef) -> list[int]: ...

    def trace(self, src: TraceSide, dst: TraceSide, protocol: str, port: int) -> TraceResult: ...


class Revisions(Protocol):
    """The regeneration queue's revisions (cilia.agent.api.policy_view.PolicyApi)."""

    def wait(self, revision: int | None, timeout: float) -> PolicyWaitResult: ...


def make_router(catalog: RuleCatalog, queries: PolicyQueries, revisions: Revisions) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/policy", response_model=PolicyList)
    def list_policy() -> PolicyList:
        return PolicyList(revision=catalog.revision, policies=[
            PolicySummary(kind=ref.kind, namespace=ref.namespace, name=ref.name,
                          rules=len(catalog.rules_of(ref)), selects_endpoints=queries.selecting(ref))
            for ref in catalog.refs()])

    @router.get("/policy/wait", response_model=PolicyWaitResult)
    def policy_wait(revision: int | None = None, timeout: float = 30.0) -> PolicyWaitResult:
        """Until every endpoint's installed policy reflects `revision` (default: the current one), or
        `timeout` seconds; the answer names the endpoints still below it and those not ready."""
        if revision is not None and revision < 0:
            raise invalid(f"policy wait: revision {revision} is negative")
        if not 0 <= timeout <= MAX_WAIT_SECONDS:
            raise invalid(f"policy wait: timeout {timeout} is not within 0-{MAX_WAIT_SECONDS:.0f} s")
        return revisions.wait(revision, timeout)

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
