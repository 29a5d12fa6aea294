"""One handler per Hubble metric, with upstream's metric names, label names and label values
(cilium pkg/hubble/metrics/{flow,drop,tcp,policy}; the modules `icmp` and `port_distribution`
hold those two), computed on cilia's flow dicts (the same translations as `cilia.hubble.convert`:
Hubble's event types, observation point names, drop reasons). A handler returns the label values
of the series a flow increments; the counting and the series' lifetime are the processor's."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cilia.hubble.convert import DROP_REASONS, POLICY_VERDICT_DROP_REASONS, TRACE_POINTS
from cilia.hubble.metrics.dns import DnsHandler
from cilia.hubble.metrics.families import MultiHandler
from cilia.hubble.metrics.http import HttpHandler, HttpV2Handler
from cilia.hubble.metrics.icmp import IcmpHandler
from cilia.hubble.metrics.port_distribution import PortDistributionHandler
from cilia.hubble.pb import flow_pb2

NAMESPACE = "hubble_"
_SOCK = 131  # cilia's dict event type for socket translations (Hubble's MessageTypeTraceSock is 7)
# Hubble's monitorAPI.TraceObservationPoints names by sub type number; the number is the one the
# converter puts on the wire (TRACE_POINTS, 0 for a point it does not know), so the label is
# what `hubble observe` shows for the same flow.
TRACE_POINT_NAMES = {
    0: "to-endpoint", 1: "to-proxy", 2: "to-host", 3: "to-stack", 4: "to-overlay", 5: "from-endpoint",
    6: "from-proxy", 7: "from-host", 8: "from-stack", 9: "from-overlay", 10: "from-network", 11: "to-network",
    12: "from-crypto", 13: "to-crypto",
}
# monitorAPI.PolicyMatchType.String()
POLICY_MATCH = {0: "none", 1: "L3-Only", 2: "L3-L4", 3: "L4-Only", 4: "all"}


def protocol(flow: Mapping[str, Any]) -> str:
    """Hubble's v1.FlowProtocol: the L4 protocol name, else "Unknown flow"."""
    l4 = flow.get("l4") or {}
    for name in ("TCP", "UDP", "ICMPv4", "ICMPv6", "SCTP"):
        if name in l4:
            return name
    return "Unknown flow"


def event_type(flow: Mapping[str, Any]) -> int:
    kind = int((flow.get("event_type") or {}).get("type", 0))
    return 7 if kind == _SOCK else kind


def drop_reason_desc(flow: Mapping[str, Any]) -> str:
    """The flow's Hubble DropReason name, as flow.GetDropReasonDesc().String()."""
    kind = event_type(flow)
    reason = flow_pb2.DROP_REASON_UNKNOWN
    if kind == 1:
        reason = DROP_REASONS.get(int(flow.get("drop_reason", 0)), flow_pb2.DROP_REASON_UNKNOWN)
    elif kind == 5 and flow.get("verdict") == "DROPPED":
        reason = POLICY_VERDICT_DROP_REASONS.get(flow.get("policy_verdict", ""), flow_pb2.POLICY_DENIED)
    return str(flow_pb2.DropReason.Name(reason))


class Handler(Protocol):
    @property
    def name(self) -> str: ...  # the --hubble-metrics name

    @property
    def metric(self) -> str: ...  # the Prometheus family, without _total

    @property
    def help(self) -> str: ...

    @property
    def labels(self) -> tuple[str, ...]: ...  # before the context labels

    def series(self, flow: Mapping[str, Any]) -> list[tuple[str, ...]]: ...


@dataclass(frozen=True)
class FlowHandler:
    name: str = "flow"
    metric: str = NAMESPACE + "flows_processed"
    help: str = "Total number of flows processed"
    labels: tuple[str, ...] = ("protocol", "type", "subtype", "verdict")

    def series(self, flow: Mapping[str, Any]) -> list[tuple[str, ...]]:
        kind = event_type(flow)
        subtype = ""
        if kind == 1:
            type_name = "Drop"
        elif kind == 3:
            type_name = "Capture"
        elif kind == 4:
            type_name = "Trace"
            subtype = TRACE_POINT_NAMES.get(TRACE_POINTS.get(str(flow.get("trace_observation_point", "")), 0), "")
        elif kind == 5:
            type_name = "PolicyVerdict"
        else:  # socket translations land here too, as upstream's TraceSock events do
            type_name, subtype = "Unknown", str(kind)
        return [(protocol(flow), type_name, subtype, str(flow.get("verdict") or "VERDICT_UNKNOWN"))]


@dataclass(frozen=True)
class DropHandler:
    name: str = "drop"
    metric: str = NAMESPACE + "drop"
    help: str = "Number of drops"
    labels: tuple[str, ...] = ("reason", "protocol")

    def series(self, flow: Mapping[str, Any]) -> list[tuple[str, ...]]:
        if flow.get("verdict") != "DROPPED":
            return []
        return [(drop_reason_desc(flow), protocol(flow))]


@dataclass(frozen=True)
class TcpHandler:
    name: str = "tcp"
    metric: str = NAMESPACE + "tcp_flags"
    help: str = "TCP flag occurrences"
    labels: tuple[str, ...] = ("flag", "family")

    def series(self, flow: Mapping[str, Any]) -> list[tuple[str, ...]]:
        if flow.get("verdict") not in ("FORWARDED", "REDIRECTED"):
            return []
        tcp = (flow.get("l4") or {}).get("TCP")
        family = (flow.get("IP") or {}).get("ipVersion")
        if not tcp or not family:
            return []
        flags = tcp.get("flags") or {}
        out: list[tuple[str, ...]] = []
        if flags.get("FIN"):
            out.append(("FIN", family))
        if flags.get("SYN"):
            out.append(("SYN-ACK" if flags.get("ACK") else "SYN", family))
        if flags.get("RST"):
            out.append(("RST", family))
        return out


@dataclass(frozen=True)
class PolicyHandler:
    name: str = "policy"
    metric: str = NAMESPACE + "policy_verdicts"
    help: str = "Number of policy verdict events"
    labels: tuple[str, ...] = ("direction", "match", "action")

    def series(self, flow: Mapping[str, Any]) -> list[tuple[str, ...]]:
        direction = str(flow.get("traffic_direction") or "TRAFFIC_DIRECTION_UNKNOWN").lower()
        if event_type(flow) == 129:  # an L7 flow (request or response) is a verdict too: match l7/<protocol>
            l7 = flow.get("l7") or {}
            sub = next((name for name in ("dns", "http", "kafka") if l7.get(name) is not None), "")
            return [(direction, f"l7/{sub}", str(flow.get("verdict") or "VERDICT_UNKNOWN").lower())]
        if event_type(flow) != 5:
            return []
        # cilia's verdict events do not carry the datapath's match type yet: "none" when no
        # rule decided (default deny, no enforcement), upstream's "unknown" otherwise.
        if "policy_match_type" in flow:
            match = POLICY_MATCH.get(int(flow["policy_match_type"]), "unknown")
        else:
            decided_by = [p for key in ("ingress_allowed_by", "egress_allowed_by", "ingress_denied_by",
                                        "egress_denied_by") for p in flow.get(key) or []]
            match = "unknown" if decided_by else "none"
        return [(direction, match, str(flow.get("verdict") or "VERDICT_UNKNOWN").lower())]


HANDLERS: dict[str, Callable[[], Handler | MultiHandler]] = {
    "flow": FlowHandler, "drop": DropHandler, "tcp": TcpHandler, "policy": PolicyHandler}
HANDLERS["icmp"] = IcmpHandler
HANDLERS["port-distribution"] = PortDistributionHandler
HANDLERS["dns"] = DnsHandler
HANDLERS["http"] = HttpHandler
HANDLERS["httpV2"] = HttpV2Handler
# The handlers whose series a record's shape fixes (cilia.flows.shape: they read no port, time,
# length or L7 field of a TCP / UDP flow), so the metrics can be counted by shape.
SHAPE_HANDLERS: frozenset[type] = frozenset({FlowHandler, DropHandler, TcpHandler, PolicyHandler})
