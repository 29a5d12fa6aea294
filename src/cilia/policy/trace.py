"""`cilia policy trace`: would traffic from these labels to those labels on this port pass?

Answers from the rules (no packets), listing every rule that matched on each side. Egress of
the source and ingress of the destination are decided independently, as the datapath does.
"""

from __future__ import annotations

from dataclasses import dataclass

from cilia.identity.labels import LabelSet
from cilia.policy.repository import PolicyRepository
from cilia.policy.resolve import Decision, EndpointPolicy, decide
from cilia.policy.rules import Direction, IdentityView


@dataclass(frozen=True)
class SideVerdict:
    direction: Direction
    decision: Decision
    selected_by: tuple[str, ...]
    rules: tuple[str, ...]  # the matched entries, described
    decided_by: str


@dataclass(frozen=True)
class TraceResult:
    allowed: bool
    egress: SideVerdict | None  # None: the source is not a local endpoint (its egress is not ours)
    ingress: SideVerdict | None

    def to_dict(self) -> dict[str, object]:
        def side(s: SideVerdict | None) -> dict[str, object] | None:
            if s is None:
                return None
            return {"verdict": s.decision.verdict.value, "enforced": s.decision.enforced,
                    "audited": s.decision.audited, "decided_by": s.decided_by,
                    "selected_by": list(s.selected_by), "matched_rules": list(s.rules)}

        return {"verdict": "ALLOWED" if self.allowed else "DENIED", "egress": side(self.egress),
                "ingress": side(self.ingress)}


def describe_rule(repository: PolicyRepository, rule_id: int, decision: Decision) -> str:
    info = repository.info(rule_id) if rule_id else None
    if info is not None:
        return info.describe()
    if not decision.enforced:
        return "no policy enforcement"
    return "allow-localhost" if decision.verdict.value == "allowed" else "default deny"


def trace_side(repository: PolicyRepository, policy: EndpointPolicy, direction: Direction, peer: IdentityView,
               protocol: int, port: int) -> SideVerdict:
    side = policy.direction(direction)
    decision = decide(side, peer, protocol, port, audit=policy.audit, allow_host=policy.allow_host_ingress)
    rules = tuple(describe_rule(repository, rid, decision) for rid in decision.matched)
    return SideVerdict(direction, decision, tuple(str(r) for r in side.selected_by), rules,
                       describe_rule(repository, decision.rule_id, decision))


def trace(repository: PolicyRepository, src: IdentityView, dst: IdentityView, protocol: int, port: int,
          src_policy: EndpointPolicy | None, dst_policy: EndpointPolicy | None) -> TraceResult:
    egress = trace_side(repository, src_policy, Direction.EGRESS, dst, protocol, port) if src_policy else None
    ingress = trace_side(repository, dst_policy, Direction.INGRESS, src, protocol, port) if dst_policy else None
    allowed = all(s is None or s.decision.passes for s in (egress, ingress))
    return TraceResult(allowed, egress, ingress)


def pod_identity(labels: LabelSet, identity_id: int = 65535) -> IdentityView:
    return IdentityView(identity_id, labels)
