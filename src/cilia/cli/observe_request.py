"""`cilia observe`'s flags -> a Hubble GetFlowsRequest (pure: unit-tested), and the few checks
Hubble's FlowFilter cannot express, applied to the flows that come back.

Semantics stay observe's: the values of one flag OR, different flags AND, and the either-side
flags (`--pod`, `--namespace`, `--label`, `--ip`, `--port`, `--service`) match the source or the
destination. Hubble ORs the filters of a whitelist and ANDs the fields of one filter, so each
either-side flag doubles the whitelist (source variant, destination variant): the whitelist is
the product, at most 2^6 filters. `--policy` has no Hubble field; it is checked here on the
`*_allowed_by` / `*_denied_by` policies and, for `default-deny`, on the verdict and summary."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cilia.flows.filter import FlowFilter
from cilia.hubble.convert import DROP_REASONS
from cilia.hubble.pb import flow_pb2, observer_pb2
from cilia.monitor.events import DROP_REASONS as CILIA_DROP_REASONS

_CILIA_REASON = {name: DROP_REASONS[code] for code, (name, _desc) in CILIA_DROP_REASONS.items() if code in DROP_REASONS}


ALL = 1 << 31  # more than any flow buffer


class ObserveArgumentError(ValueError):
    """A flag value that cannot be a filter; the message names the flag."""


@dataclass
class ObserveArgs(FlowFilter):
    """observe's flags: the flow filter's (the same names as `GET /v1/flows`), how many, follow."""

    last: int = 20
    follow: bool = False


def _pod(value: str) -> str:
    """observe's `[namespace/]pod` (a bare name: any namespace) in Hubble's syntax (`/pod`)."""
    return value if "/" in value else f"/{value}"


def _enum(flag: str, enum: object, values: Sequence[str], aliases: Mapping[str, int] | None = None) -> list[int]:
    out = []
    for value in values:
        name = value.upper().replace("-", "_")
        if aliases and name in aliases:
            out.append(aliases[name])
            continue
        try:
            out.append(enum.Value(name))  # type: ignore[attr-defined]
        except ValueError:
            names = enum.keys()  # type: ignore[attr-defined]
            known = ", ".join(n for n in names if not n.endswith("UNKNOWN"))
            raise ObserveArgumentError(f"{flag} {value!r}: not one of {known}") from None
    return out


def _ports(flag: str, values: Sequence[str]) -> list[str]:
    for value in values:
        if not value.isdigit() or int(value) > 65535:
            raise ObserveArgumentError(f"{flag} {value!r}: not a port number")
    return list(values)


def _label(value: str) -> str:
    key, sep, wanted = value.partition("=")
    if not key:
        raise ObserveArgumentError(f"--label {value!r}: needs a key (key or key=value)")
    return f"{key}={wanted}" if sep else key


def build_request(args: ObserveArgs) -> observer_pb2.GetFlowsRequest:
    base = flow_pb2.FlowFilter()
    base.source_pod.extend(_pod(p) for p in args.from_pod)
    base.destination_pod.extend(_pod(p) for p in args.to_pod)
    base.source_ip.extend(args.from_ip)
    base.destination_ip.extend(args.to_ip)
    base.protocol.extend(p.lower() for p in args.protocol)
    base.verdict.extend(_enum("--verdict", flow_pb2.Verdict, args.verdict))  # type: ignore[arg-type]
    base.drop_reason_desc.extend(_enum("--drop-reason", flow_pb2.DropReason, args.drop_reason,  # type: ignore[arg-type]
                                       _CILIA_REASON))
    base.traffic_direction.extend(_enum("--traffic-direction", flow_pb2.TrafficDirection,  # type: ignore[arg-type]
                                        args.traffic_direction))
    # Either-side flags: (source field, destination field, values)
    either = [(s, d, v) for s, d, v in (
        ("source_pod", "destination_pod", [_pod(p) for p in args.pod]),
        ("source_pod", "destination_pod", [f"{n}/" for n in args.namespace]),
        ("source_label", "destination_label", [_label(v) for v in args.label]),
        ("source_ip", "destination_ip", list(args.ip)),
        ("source_port", "destination_port", _ports("--port", args.port)),
        ("source_service", "destination_service", [_pod(s) for s in args.service]),
    ) if v]
    whitelist = []
    for sides in itertools.product((0, 1), repeat=len(either)):
        f = flow_pb2.FlowFilter()
        f.CopyFrom(base)
        for side, (source_field, destination_field, values) in zip(sides, either, strict=True):
            target = getattr(f, destination_field if side else source_field)
            if len(target):  # --from-pod and --pod both on the source: both must hold, AND in one field
                # cannot be expressed (a field ORs its values): keep the narrower flag, check the other here
                continue
            target.extend(values)
        whitelist.append(f)
    # checked here too: ask for every buffered flow and keep the last N that pass
    number = ALL if needs_client_side(args) else args.last
    request = observer_pb2.GetFlowsRequest(number=number, follow=args.follow)
    if any(w.ListFields() for w in whitelist):
        request.whitelist.extend(whitelist)
    return request


def client_side_match(args: ObserveArgs, flow: flow_pb2.Flow) -> bool:
    """What the request could not say: --policy, and an either-side pod/namespace flag that
    shares a field with --from-pod / --to-pod."""
    if args.policy and not any(_policy_match(flow, wanted) for wanted in args.policy):
        return False
    for values, test in ((args.pod, _pod_either), (args.namespace, _namespace_either)):
        if values and not any(test(flow, value) for value in values):
            return False
    return True


def needs_client_side(args: ObserveArgs) -> bool:
    shared = (args.from_pod or args.to_pod) and (args.pod or args.namespace)
    return bool(args.policy or shared)


def _pod_either(flow: flow_pb2.Flow, value: str) -> bool:
    namespace, _, name = value.rpartition("/")
    return any(e.pod_name.startswith(name) and (not namespace or e.namespace == namespace)
               for e in (flow.source, flow.destination))


def _namespace_either(flow: flow_pb2.Flow, value: str) -> bool:
    return value in (flow.source.namespace, flow.destination.namespace)


def _policy_match(flow: flow_pb2.Flow, wanted: str) -> bool:
    """By name, namespace/name or Kind/namespace/name of the deciding policy, or `default-deny`."""
    policies = [*flow.ingress_allowed_by, *flow.egress_allowed_by, *flow.ingress_denied_by, *flow.egress_denied_by]
    if wanted in ("default-deny", "default deny"):
        decided = flow.event_type.type == 5 or flow.drop_reason_desc == flow_pb2.POLICY_DENIED
        return decided and flow.verdict in (flow_pb2.DROPPED, flow_pb2.AUDIT) and not policies
    for policy in policies:
        names = {policy.name, f"{policy.namespace}/{policy.name}",
                 "/".join(p for p in (policy.kind, policy.namespace, policy.name) if p)}
        if wanted in names:
            return True
    return False
