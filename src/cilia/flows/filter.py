"""Flow filters like hubble observe's: values of one flag OR, different flags AND."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from cilia.flows.build import Flow


@dataclass
class FlowFilter:
    pod: list[str] = field(default_factory=list)
    from_pod: list[str] = field(default_factory=list)
    to_pod: list[str] = field(default_factory=list)
    namespace: list[str] = field(default_factory=list)
    label: list[str] = field(default_factory=list)
    ip: list[str] = field(default_factory=list)
    from_ip: list[str] = field(default_factory=list)
    to_ip: list[str] = field(default_factory=list)
    port: list[str] = field(default_factory=list)
    protocol: list[str] = field(default_factory=list)
    verdict: list[str] = field(default_factory=list)
    drop_reason: list[str] = field(default_factory=list)
    traffic_direction: list[str] = field(default_factory=list)
    policy: list[str] = field(default_factory=list)
    service: list[str] = field(default_factory=list)

    @classmethod
    def from_params(cls, params: Mapping[str, Sequence[str]]) -> FlowFilter:
        known = {f.name for f in fields(cls)}
        unknown = set(params) - known
        if unknown:
            raise ValueError(f"unknown flow filter {sorted(unknown)[0]!r} (known: {', '.join(sorted(known))})")
        return cls(**{name: [v for v in values if v] for name, values in params.items()})

    def to_params(self) -> dict[str, list[str]]:
        return {f.name: list(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name)}

    def matches(self, flow: Flow) -> bool:
        src, dst = flow.get("source", {}), flow.get("destination", {})
        ip = flow.get("IP", {})
        l4: dict[str, Any] = next(iter(flow.get("l4", {}).values()), {})
        l4_proto = next(iter(flow.get("l4", {})), "").lower()
        checks: list[tuple[list[str], Callable[[str], bool]]] = [
            (self.pod, lambda v: _pod_match(src, v) or _pod_match(dst, v)),
            (self.from_pod, lambda v: _pod_match(src, v)),
            (self.to_pod, lambda v: _pod_match(dst, v)),
            (self.namespace, lambda v: v in (src.get("namespace"), dst.get("namespace"))),
            (self.label, lambda v: _label_match(src, v) or _label_match(dst, v)),
            (self.ip, lambda v: v in (ip.get("source"), ip.get("destination"))),
            (self.from_ip, lambda v: v == ip.get("source")),
            (self.to_ip, lambda v: v == ip.get("destination")),
            (self.port, lambda v: int(v) in (l4.get("source_port"), l4.get("destination_port"))),
            (self.protocol, lambda v: v.lower() == l4_proto or (v.lower() == "icmp" and l4_proto == "icmpv4")),
            (self.verdict, lambda v: v.upper() == flow.get("verdict")),
            (self.drop_reason, lambda v: v.upper() == flow.get("drop_reason_desc")),
            (self.traffic_direction, lambda v: v.upper() == flow.get("traffic_direction")),
            (self.policy, lambda v: _policy_match(flow, v)),
            (self.service, lambda v: _service_match(flow, v)),
        ]
        return all(not values or any(test(value) for value in values) for values, test in checks)


def _pod_match(endpoint: dict[str, Any], wanted: str) -> bool:
    namespace, _, name = wanted.rpartition("/")
    if endpoint.get("pod_name") != name:
        return False
    return not namespace or endpoint.get("namespace") == namespace


def _label_match(endpoint: dict[str, Any], wanted: str) -> bool:
    key, _, value = wanted.partition("=")
    for label in endpoint.get("labels", []):
        _source, _, kv = label.partition(":")
        lkey, _, lvalue = kv.partition("=")
        if lkey == key and (not value or lvalue == value):
            return True
    return False


def _service_match(flow: Flow, wanted: str) -> bool:
    """Service traffic by name or namespace/name (either side: requests and their replies)."""
    namespace, _, name = wanted.rpartition("/")
    for key in ("service", "destination_service", "source_service"):
        ref = flow.get(key) or {}
        if ref.get("name") == name and (not namespace or ref.get("namespace") == namespace):
            return True
    return False


def _policy_match(flow: Flow, wanted: str) -> bool:
    """By name, namespace/name or kind/namespace/name of the deciding policy, or `default-deny`."""
    decision = flow.get("policy_decision")
    if not decision:
        return False
    if wanted.replace("-", " ") == decision:
        return True
    for key in ("ingress_denied_by", "egress_denied_by", "ingress_allowed_by", "egress_allowed_by"):
        for policy in flow.get(key, []):
            names = {policy["name"], f"{policy['namespace']}/{policy['name']}",
                     "/".join(p for p in (policy["kind"], policy["namespace"], policy["name"]) if p)}
            if wanted in names:
                return True
    return False
