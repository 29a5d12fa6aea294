"""cilia's flows (the Hubble-shaped dicts cilia.flows.build makes) -> Hubble flow.Flow messages.

The dicts already use Hubble's JSON field names; what differs on the wire is numbering, and there
cilia's datapath and Hubble's disagree in places, so this module holds the translations:
- drop reasons: cilia's datapath codes (bpf/lib/drop_reasons.h) -> Hubble's DropReason values,
  by meaning (cilia's 143 "CT: map insertion failed" is Hubble's 155, not Hubble's 143);
- monitor event types: trace 4, drop 1, policy verdict 5, socket translation 7 (Hubble's
  MessageTypeTraceSock; the dict carries 131);
- trace sub types: the monitor API's observation point numbers (to-endpoint 0, to-stack 3, ...),
  which is what `hubble observe --type trace:to-endpoint` filters on and the printer names.
Every field the dict knows is filled; fields cilia has no source for stay unset."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.wrappers_pb2 import BoolValue

from cilia import __version__
from cilia.hubble.convert_l7 import fill_layer7
from cilia.hubble.pb import flow_pb2
from cilia.identity.labels import CLUSTER_LABEL

# cilia datapath drop code -> Hubble DropReason value (by meaning).
DROP_REASONS: dict[int, flow_pb2.DropReason] = {
    130: flow_pb2.INVALID_SOURCE_MAC,
    131: flow_pb2.INVALID_DESTINATION_MAC,
    132: flow_pb2.INVALID_SOURCE_IP,
    133: flow_pb2.POLICY_DENIED,
    134: flow_pb2.INVALID_PACKET_DROPPED,
    135: flow_pb2.CT_TRUNCATED_OR_INVALID_HEADER,
    137: flow_pb2.UNKNOWN_L4_PROTOCOL,
    139: flow_pb2.UNSUPPORTED_L3_PROTOCOL,
    143: flow_pb2.CT_MAP_INSERTION_FAILED,
    147: flow_pb2.ERROR_RETRIEVING_TUNNEL_KEY,
    154: flow_pb2.UNSUPPORTED_L2_PROTOCOL,
    158: flow_pb2.SERVICE_BACKEND_NOT_FOUND,
    164: flow_pb2.TTL_EXCEEDED,
    165: flow_pb2.NO_MATCHING_LOCAL_CONTAINER_FOUND,
    171: flow_pb2.INVALID_IDENTITY,
    172: flow_pb2.UNKNOWN_SENDER,
    181: flow_pb2.POLICY_DENY,
    # cilia: the endpoint has no policy state and fails closed
    220: flow_pb2.NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION,
    # cilia: an L7 rule covers the connection and no proxy socket takes it (Cilium's tproxy lookup)
    221: flow_pb2.SOCKET_LOOKUP_FAILED,
}
# A denied policy verdict names its reason as Hubble's does (the drop it stands for).
POLICY_VERDICT_DROP_REASONS: dict[str, flow_pb2.DropReason] = {
    "denied": flow_pb2.POLICY_DENY,
    "default-denied": flow_pb2.POLICY_DENIED,
    "not-installed": flow_pb2.NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION,
}

MESSAGE_TYPE_DROP = 1
MESSAGE_TYPE_TRACE = 4
MESSAGE_TYPE_POLICY_VERDICT = 5
MESSAGE_TYPE_TRACE_SOCK = 7
_CILIA_SOCK_EVENT_TYPE = 131

# Monitor API observation points (cilium pkg/monitor/api TraceToLxc...), the trace sub_type.
TRACE_POINTS: dict[str, int] = {
    "TO_ENDPOINT": 0, "TO_PROXY": 1, "TO_HOST": 2, "TO_STACK": 3, "TO_OVERLAY": 4, "FROM_ENDPOINT": 5,
    "FROM_PROXY": 6, "FROM_HOST": 7, "FROM_STACK": 8, "FROM_OVERLAY": 9, "FROM_NETWORK": 10, "TO_NETWORK": 11,
    "FROM_CRYPTO": 12, "TO_CRYPTO": 13,
}
EMITTER = "Cilia"


def convert(flow: Mapping[str, Any]) -> flow_pb2.Flow:
    out = flow_pb2.Flow()
    if flow.get("time"):
        out.time.CopyFrom(_timestamp(flow["time"]))
    out.uuid = flow.get("uuid", "")
    out.emitter.name = EMITTER
    out.emitter.version = __version__
    out.verdict = _enum(flow_pb2.Verdict, flow.get("verdict"))
    out.Type = _enum(flow_pb2.FlowType, flow.get("Type"))
    out.node_name = flow.get("node_name", "")
    _event_type(flow, out)
    if eth := flow.get("ethernet"):
        out.ethernet.source = eth.get("source", "")
        out.ethernet.destination = eth.get("destination", "")
    _ip(flow, out)
    _l4(flow.get("l4") or {}, out.l4)
    if "source" in flow:
        _endpoint(flow["source"], out.source)
    if "destination" in flow:
        _endpoint(flow["destination"], out.destination)
    out.source_names.extend(flow.get("source_names") or ())
    out.destination_names.extend(flow.get("destination_names") or ())
    for key in ("source_service", "destination_service"):
        if ref := flow.get(key):
            target = getattr(out, key)
            target.name = ref.get("name", "")
            target.namespace = ref.get("namespace", "")
    if direction := flow.get("traffic_direction"):
        out.traffic_direction = _enum(flow_pb2.TrafficDirection, direction)
    if point := flow.get("trace_observation_point"):
        out.trace_observation_point = _enum(flow_pb2.TraceObservationPoint, point)
    if reason := flow.get("trace_reason"):
        out.trace_reason = _enum(flow_pb2.TraceReason, reason)
    _drop_reason(flow, out)
    _is_reply(flow, out)
    if (iface := flow.get("interface")) and iface.get("index"):
        out.interface.index = iface["index"]
        if iface.get("name"):
            out.interface.name = iface["name"]
    if (source_file := flow.get("file")) and source_file.get("name"):
        out.file.name = source_file["name"]
        out.file.line = source_file.get("line", 0)
    for key in ("egress_allowed_by", "ingress_allowed_by", "egress_denied_by", "ingress_denied_by"):
        for rule in flow.get(key) or []:
            _policy(rule, getattr(out, key).add())
    if point := flow.get("sock_xlation_point"):
        out.sock_xlate_point = _enum(flow_pb2.SocketTranslationPoint, point)
    out.socket_cookie = flow.get("socket_cookie", 0)
    out.cgroup_id = flow.get("cgroup_id", 0)
    if l7 := flow.get("l7"):
        fill_layer7(l7, out.l7)
    out.Summary = flow.get("Summary", "")
    return out


class _Enum(Protocol):
    def Value(self, name: str) -> int: ...


def _enum(enum: _Enum, name: str | None) -> Any:
    """The enum value of a name, 0 (every Hubble enum's unknown) for a name Hubble lacks."""
    try:
        return enum.Value(name) if name else 0
    except ValueError:
        return 0


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _timestamp(text: str) -> Timestamp:
    """RFC 3339 as cilia writes it. datetime.fromisoformat (C) first: protobuf's FromJsonString
    goes through strptime and was a third of the cost of converting a flow."""
    stamp = Timestamp()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        stamp.FromJsonString(text)
        return stamp
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    micros = (when - _EPOCH) // _MICROSECOND
    stamp.seconds, stamp.nanos = divmod(micros, 1_000_000)
    stamp.nanos *= 1000
    return stamp


def _event_type(flow: Mapping[str, Any], out: flow_pb2.Flow) -> None:
    event = flow.get("event_type") or {}
    kind = event.get("type", 0)
    if kind == _CILIA_SOCK_EVENT_TYPE:
        out.event_type.type = MESSAGE_TYPE_TRACE_SOCK
        return
    out.event_type.type = kind
    if kind == MESSAGE_TYPE_DROP:
        code = flow.get("drop_reason", 0)
        out.event_type.sub_type = DROP_REASONS.get(code, code)
    elif kind == MESSAGE_TYPE_TRACE:
        out.event_type.sub_type = TRACE_POINTS.get(flow.get("trace_observation_point", ""), 0)
    else:
        out.event_type.sub_type = event.get("sub_type", 0)


def _ip(flow: Mapping[str, Any], out: flow_pb2.Flow) -> None:
    ip = flow.get("IP")
    if not ip:
        return
    out.IP.source = ip.get("source", "")
    out.IP.destination = ip.get("destination", "")
    if version := ip.get("ipVersion"):
        out.IP.ipVersion = _enum(flow_pb2.IPVersion, version)
    else:
        address = out.IP.destination or out.IP.source
        if address:
            out.IP.ipVersion = flow_pb2.IPv6 if ipaddress.ip_address(address).version == 6 else flow_pb2.IPv4


def _l4(l4: Mapping[str, Any], out: flow_pb2.Layer4) -> None:
    for protocol, fields in l4.items():
        if protocol in ("TCP", "UDP", "SCTP"):
            target = getattr(out, protocol)
            target.source_port = fields.get("source_port", 0)
            target.destination_port = fields.get("destination_port", 0)
            if protocol == "TCP":
                flags = fields.get("flags") or {}
                target.flags.SetInParent()  # a TCP flow always says which flags it had
                for name, value in flags.items():
                    setattr(target.flags, name, bool(value))
        elif protocol in ("ICMPv4", "ICMPv6"):
            target = getattr(out, protocol)
            target.SetInParent()
            target.type = fields.get("type") or 0
            target.code = fields.get("code") or 0


def _endpoint(endpoint: Mapping[str, Any], out: flow_pb2.Endpoint) -> None:
    out.SetInParent()
    out.ID = endpoint.get("ID", 0)
    out.identity = endpoint.get("identity", 0)
    out.namespace = endpoint.get("namespace", "")
    out.pod_name = endpoint.get("pod_name", "")
    for label in endpoint.get("labels") or []:
        # Cilium writes a label without a value as "source:key" (cilia: "source:key=").
        text = label[:-1] if label.endswith("=") else label
        out.labels.append(text)
        source, _, rest = text.partition(":")
        key, _, value = rest.partition("=")
        if key == CLUSTER_LABEL and source == "k8s":
            out.cluster_name = value
    for workload in endpoint.get("workloads") or []:
        out.workloads.add(name=workload.get("name", ""), kind=workload.get("kind", ""))


def _drop_reason(flow: Mapping[str, Any], out: flow_pb2.Flow) -> None:
    reason = flow_pb2.DROP_REASON_UNKNOWN
    if out.event_type.type == MESSAGE_TYPE_DROP:
        code = flow.get("drop_reason", 0)
        reason = DROP_REASONS.get(code, flow_pb2.DROP_REASON_UNKNOWN)
        out.drop_reason = reason or code  # an unknown cilia code stays visible in the legacy field
    elif out.event_type.type == MESSAGE_TYPE_POLICY_VERDICT and out.verdict == flow_pb2.DROPPED:
        reason = POLICY_VERDICT_DROP_REASONS.get(flow.get("policy_verdict", ""), flow_pb2.POLICY_DENIED)
        out.drop_reason = reason
    out.drop_reason_desc = reason


def _is_reply(flow: Mapping[str, Any], out: flow_pb2.Flow) -> None:
    """Hubble leaves is_reply unset when the datapath did not know (a trace without a conntrack
    verdict, a drop before conntrack); cilia's trace events say via trace_reason."""
    if "is_reply" not in flow:
        return
    kind = out.event_type.type
    if kind == MESSAGE_TYPE_TRACE and flow.get("trace_reason", "TRACE_REASON_UNKNOWN") == "TRACE_REASON_UNKNOWN" \
            and "trace_reason" in flow:
        return
    if kind == MESSAGE_TYPE_DROP and not flow["is_reply"]:
        return
    out.is_reply.CopyFrom(BoolValue(value=bool(flow["is_reply"])))
    out.reply = bool(flow["is_reply"])


def _policy(rule: Mapping[str, Any], out: flow_pb2.Policy) -> None:
    out.name = rule.get("name", "")
    out.namespace = rule.get("namespace", "")
    out.kind = rule.get("kind", "")
    out.revision = rule.get("revision", 0)
    # Cilium's labels for a policy's rules (what `cilium policy get` shows as derived-from).
    if out.kind:
        out.labels.append(f"k8s:io.cilium.k8s.policy.derived-from={out.kind}")
    if out.name:
        out.labels.append(f"k8s:io.cilium.k8s.policy.name={out.name}")
    if out.namespace:
        out.labels.append(f"k8s:io.cilium.k8s.policy.namespace={out.namespace}")
