"""`cilia observe`'s flags -> a Hubble GetFlowsRequest (pure: unit-tested), and the few checks
Hubble's FlowFilter cannot express, applied to the flows that come back.

Semantics stay observe's: the values of one flag OR, different flags AND, and the either-side
flags (`--pod`, `--namespace`, `--label`, `--ip`, `--port`, `--service`) match the source or the
destination. Hubble ORs the filters of a whitelist and ANDs the fields of one filter, so each
either-side flag doubles the whitelist (source variant, destination variant): the whitelist is
the product (`--fqdn` has a third variant: the DNS query). `--policy` has no Hubble field; it is checked here on the
`*_allowed_by` / `*_denied_by` policies and, for `default-deny`, on the verdict and summary."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cilia.flows.filter import FlowFilter
from cilia.hubble.convert import DROP_REASONS, TRACE_POINTS
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
    # Hubble-only fields (the agent's /v1/flows filter has none of these)
    type: list[str] = field(default_factory=list)  # hubble's --type: drop, trace[:point], policy-verdict, l7, ...
    http_method: list[str] = field(default_factory=list)
    http_status: list[str] = field(default_factory=list)  # "403", "4+", "40+"
    http_path: list[str] = field(default_factory=list)  # regex on the URL's path
    http_url: list[str] = field(default_factory=list)  # regex on the URL
    fqdn: list[str] = field(default_factory=list)  # either side's name, or the DNS query ("*" wildcards)
    from_fqdn: list[str] = field(default_factory=list)  # the source's DNS names (hubble's --from-fqdn)
    to_fqdn: list[str] = field(default_factory=list)  # the destination's DNS names (hubble's --to-fqdn)
    dns_query: list[str] = field(default_factory=list)  # regex on the DNS query


# hubble's --type names (monitor API message types), as its CLI maps them
EVENT_TYPES = {"drop": 1, "debug": 2, "capture": 3, "trace": 4, "policy-verdict": 5, "trace-sock": 7,
               "agent": 9, "l7": 129}


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


def _event_types(values: Sequence[str]) -> list[flow_pb2.EventTypeFilter]:
    out = []
    for value in values:
        name, _, sub = value.partition(":")
        if name not in EVENT_TYPES:
            raise ObserveArgumentError(f"--type {value!r}: not one of {', '.join(EVENT_TYPES)}")
        f = flow_pb2.EventTypeFilter(type=EVENT_TYPES[name])
        if sub:
            point = sub.upper().replace("-", "_")
            if name != "trace" or point not in TRACE_POINTS:
                raise ObserveArgumentError(f"--type {value!r}: unknown sub type {sub!r}")
            f.match_sub_type, f.sub_type = True, TRACE_POINTS[point]
        out.append(f)
    return out


def _fqdn_query(pattern: str) -> str:
    """An FQDN pattern (`*` any characters of a name) as a regex on a DNS query (trailing dot)."""
    text = pattern.strip().lower().removesuffix(".")
    if not text or any(not (c.isalnum() or c in "-_.*") for c in text):
        raise ObserveArgumentError(f"--fqdn {pattern!r}: not a name or pattern (letters, digits, -, _, ., *)")
    return "(?i)^" + re.escape(text).replace(r"\*", "[-.0-9a-z_]*") + r"\.?$"


def build_request(args: ObserveArgs) -> observer_pb2.GetFlowsRequest:
    base = flow_pb2.FlowFilter()
    base.event_type.extend(_event_types(args.type))
    base.http_method.extend(args.http_method)
    base.http_status_code.extend(args.http_status)
    base.http_path.extend(args.http_path)
    base.http_url.extend(args.http_url)
    base.dns_query.extend(args.dns_query)
    if args.fqdn and (args.from_fqdn or args.to_fqdn):
        raise ObserveArgumentError("--fqdn cannot be combined with --from-fqdn or --to-fqdn (as in hubble)")
    base.source_fqdn.extend(args.from_fqdn)
    base.destination_fqdn.extend(args.to_fqdn)
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
    # Either-side flags: (the fields one of which must match, values for each)
    either = [(names, v) for names, v in (
        (("source_pod", "destination_pod"), [[_pod(p) for p in args.pod]] * 2),
        (("source_pod", "destination_pod"), [[f"{n}/" for n in args.namespace]] * 2),
        (("source_label", "destination_label"), [[_label(v) for v in args.label]] * 2),
        (("source_ip", "destination_ip"), [list(args.ip)] * 2),
        (("source_port", "destination_port"), [_ports("--port", args.port)] * 2),
        (("source_service", "destination_service"), [[_pod(s) for s in args.service]] * 2),
        # --fqdn: a side's DNS name (Hubble's --fqdn) or, for DNS flows, the query itself
        (("source_fqdn", "destination_fqdn", "dns_query"),
         [list(args.fqdn)] * 2 + [[_fqdn_query(q) for q in args.fqdn]]),
    ) if v[0]]
    whitelist = []
    for sides in itertools.product(*(range(len(names)) for names, _ in either)):
        f = flow_pb2.FlowFilter()
        f.CopyFrom(base)
        for side, (names, per_field) in zip(sides, either, strict=True):
            values = per_field[side]
            target = getattr(f, names[side])
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
