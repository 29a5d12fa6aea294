"""The policy engine in the API's terms: wire models out, and settings changes that answer once
the endpoints reflect them.

The engine (cilia.policy.engine) knows nothing of the wire models; the routers know nothing of
the engine. Settings (`PATCH /v1/config`, per-endpoint audit) reach many endpoints and callers
read the endpoints' policy status right after, so those answer once the regeneration is done
(bounded); policy objects (`/v1/resources/apply`) answer at once with the revision they produced,
and `GET /v1/policy/wait` waits for it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict

from cilia.api.models import AgentConfigPatch, AgentConfigView, EndpointPolicyStatus, PolicyWaitResult
from cilia.policy.engine import PolicyEngine
from cilia.policy.regeneration import WaitResult
from cilia.policy.rules import PolicyRef
from cilia.policy.trace import TraceResult

log = logging.getLogger(__name__)
SETTINGS_WAIT_SECONDS = 60.0
TraceSide = tuple[str | None, list[str], str | None]


def wait_result(result: WaitResult) -> PolicyWaitResult:
    return PolicyWaitResult(revision=result.revision, current=result.current, reached=result.reached,
                            pending=result.pending, not_ready=result.not_ready)


class PolicyApi:
    def __init__(self, engine: PolicyEngine, settings_wait: float = SETTINGS_WAIT_SECONDS) -> None:
        self._engine = engine
        self._settings_wait = settings_wait

    # ----- revisions ------------------------------------------------------------------------------
    @property
    def revision(self) -> int:
        return self._engine.revision

    def wait(self, revision: int | None, timeout: float) -> PolicyWaitResult:
        return wait_result(self._engine.wait(revision, timeout))

    def _settle(self, revision: int, what: str) -> None:
        result = self._engine.wait(revision, self._settings_wait)
        if not result.reached:
            log.warning("%s: %d endpoints still regenerating after %.0f s", what, len(result.pending),
                        self._settings_wait)

    # ----- the policies in force ------------------------------------------------------------------
    def refs(self) -> list[PolicyRef]:
        return self._engine.repository.refs()

    def rules_of(self, ref: PolicyRef) -> Sequence[object]:
        return self._engine.repository.rules_of(ref)

    def selecting(self, ref: PolicyRef) -> list[int]:
        return self._engine.selecting(ref)

    def trace(self, src: TraceSide, dst: TraceSide, protocol: str, port: int) -> TraceResult:
        return self._engine.trace(src, dst, protocol, port)

    # ----- endpoints ------------------------------------------------------------------------------
    def status(self, endpoint_id: int) -> EndpointPolicyStatus | None:
        status = self._engine.status(endpoint_id)
        return EndpointPolicyStatus(**asdict(status)) if status is not None else None

    def set_endpoint_audit(self, endpoint_id: int, audit: bool | None) -> None:
        self._settle(self._engine.set_endpoint_audit(endpoint_id, audit), f"endpoint {endpoint_id} audit mode")

    # ----- settings -------------------------------------------------------------------------------
    def config(self) -> AgentConfigView:
        settings, _revision = self._engine.config()
        return AgentConfigView(policy_enforcement=settings.enforcement.value, policy_audit_mode=settings.audit,
                               allow_localhost=settings.allow_localhost)

    def patch_config(self, patch: AgentConfigPatch) -> AgentConfigView:
        revision = self._engine.patch_config(patch.policy_enforcement, patch.policy_audit_mode, patch.allow_localhost)
        self._settle(revision, "settings")
        return self.config()
