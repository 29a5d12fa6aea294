"""Decoded datapath events -> flows shaped like Hubble's (`hubble observe -o json` field names)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cilia.hostport import host_port
from cilia.identity.reserved import ReservedIdentity
from cilia.monitor.events import EVENT_DROP, EVENT_TRACE, MonitorEvent, SockEvent

Flow = dict[str, Any]


@dataclass(frozen=True)
class EndpointView:
    """What a flow shows of a local endpoint."""

    id: int
    identity: int
    namespace: str
    pod_name: str
    labels: list[str]


EndpointLookup = Callable[[str], EndpointView | None]  # by IP
NetnsLookup = Callable[[int], EndpointView | None]  # by network namespace cookie
IdentityLookup = Callable[[int], list[str]]  # identity -> labels
RuleLookup = Callable[[int], dict[str, Any] | None]  # rule id -> {kind, namespace, name, rule, id}
# rev-NAT id -> {service, namespace, name, address, port, protocol, frontend}
ServiceLookup = Callable[[int], dict[str, Any] | None]
NameLookup = Callable[[int, str], list[str]]  # (endpoint id, IP) -> DNS names (cilia.fqdn.history)

_OBS_TO_HUBBLE = {"TO_ENDPOINT": "TO_ENDPOINT", "TO_STACK": "TO_STACK", "FROM_ENDPOINT": "FROM_ENDPOINT",
                  "TO_HOST": "TO_HOST", "TO_OVERLAY": "TO_OVERLAY", "FROM_OVERLAY": "FROM_OVERLAY",
                  "FROM_NETWORK": "FROM_NETWORK", "TO_NETWORK": "TO_NETWORK"}
_ICMP4_NAMES = {0: "EchoReply", 3: "DestinationUnreachable", 8: "EchoRequest", 11: "TimeExceeded"}
_ICMP6_NAMES = {1: "DestinationUnreachable", 3: "TimeExceeded", 128: "EchoRequest", 129: "EchoReply"}


class FlowBuilder:
    def __init__(self, node_name: str, endpoints: EndpointLookup, identities: IdentityLookup,
                 boot_time_ns: int, rules: RuleLookup | None = None, services: ServiceLookup | None = None,
                 netns: NetnsLookup | None = None, names: NameLookup | None = None) -> None:
        self._netns: NetnsLookup = netns or (lambda _cookie: None)
        self._names = names
        self._rules: RuleLookup = rules or (lambda _rule_id: None)
        self._services: ServiceLookup = services or (lambda _rev_nat_id: None)
        self.node_name = node_name
        self._endpoints = endpoints
        self._identities = identities
        # ktime is CLOCK_MONOTONIC; add the wall-clock offset taken once at start.
        self._boot_time_ns = boot_time_ns

    def _endpoint(self, ip: str, identity: int, endpoints: EndpointLookup | None = None) -> dict[str, Any]:
        view = (endpoints or self._endpoints)(ip) if ip else None
        if view is not None:
            return _view(view)
        return {"identity": identity, "labels": self._identities(identity)}

    def build(self, event: MonitorEvent, endpoints: EndpointLookup | None = None, flow_id: str | None = None) -> Flow:
        """`endpoints`: the endpoint views as they were when the event arrived (default: the builder's);
        `flow_id`: the flow's uuid (default: a random one)."""
        packet = event.packet
        timestamp = datetime.fromtimestamp((self._boot_time_ns + event.ktime_ns) / 1e9, tz=UTC)
        flow: Flow = {
            "time": timestamp.isoformat().replace("+00:00", "Z"),
            "uuid": flow_id or str(uuid.uuid4()),
            "verdict": _verdict(event),
            "ethernet": {"source": packet.eth_source, "destination": packet.eth_destination},
            "source": self._endpoint(packet.source, event.src_identity, endpoints),
            "destination": self._endpoint(packet.destination, event.dst_identity, endpoints),
            "Type": "L3_L4",
            "node_name": self.node_name,
            "event_type": {"type": _EVENT_TYPE.get(event.type, 0)},
            "traffic_direction": event.direction,
            "is_reply": event.is_reply,
            "interface": {"index": event.ifindex},
        }
        if packet.ip_version:
            flow["IP"] = {"source": packet.source, "destination": packet.destination,
                          "ipVersion": f"IPv{packet.ip_version}"}
        if self._names is not None:
            self._add_names(flow, packet.source, packet.destination)
        l4 = packet.l4
        summary = ""
        if l4 is not None:
            if l4.protocol in ("TCP", "UDP"):
                entry: dict[str, Any] = {"source_port": l4.source_port, "destination_port": l4.destination_port}
                if l4.protocol == "TCP":
                    entry["flags"] = {name: True for name in sorted(l4.tcp_flags)}
                    summary = "TCP Flags: " + ", ".join(sorted(l4.tcp_flags))
                else:
                    summary = "UDP"
                flow["l4"] = {l4.protocol: entry}
            elif l4.protocol in ("ICMPv4", "ICMPv6"):
                flow["l4"] = {l4.protocol: {"type": l4.icmp_type, "code": l4.icmp_code}}
                names = _ICMP4_NAMES if l4.protocol == "ICMPv4" else _ICMP6_NAMES
                summary = f"{l4.protocol} {names.get(l4.icmp_type or 0, str(l4.icmp_type))}"
        if event.is_policy_verdict or event.is_policy_drop:
            policy = self._policy(event)
            side = "ingress" if event.direction == "INGRESS" else "egress"
            allowed = event.is_policy_verdict and event.policy_verdict == "allowed"
            flow[f"{side}_{'allowed' if allowed else 'denied'}_by"] = [policy] if policy.get("kind") else []
            flow["policy_decision"] = policy["decision"]
        if event.type == EVENT_DROP:
            flow["drop_reason"] = event.drop_reason
            flow["drop_reason_desc"] = event.drop_reason_name
            flow["file"] = {"name": event.source_file, "line": event.source_line}
            flow["event_type"]["sub_type"] = event.drop_reason
            summary = event.drop_reason_desc
            if event.is_policy_drop:
                summary += f" ({flow['policy_decision']})"
        elif event.is_policy_verdict:
            flow["event_type"]["sub_type"] = 0
            flow["policy_verdict"] = event.policy_verdict
            summary = f"policy {event.policy_verdict}{', audit: let through' if event.audited else ''} " \
                      f"({flow['policy_decision']})"
        else:
            flow["trace_observation_point"] = _OBS_TO_HUBBLE.get(event.observation_point, "UNKNOWN_POINT")
            # conntrack's verdict: new, established, reply, related (Hubble's TraceReason names)
            flow["trace_reason"] = event.ct_status.upper() or "TRACE_REASON_UNKNOWN"
            flow["event_type"]["sub_type"] = event.subtype
        if event.type == EVENT_TRACE and event.rev_nat_id:
            summary = self._add_service(flow, event, summary)
        flow["Summary"] = summary
        return flow

    def _add_names(self, flow: Flow, source: str, destination: str) -> None:
        """Hubble's FQDN enrichment: each side's IP named from the other (local) side's DNS history."""
        assert self._names is not None
        if destination and (ep := flow["source"].get("ID")) and (names := self._names(ep, destination)):
            flow["destination_names"] = names
        if source and (ep := flow["destination"].get("ID")) and (names := self._names(ep, source)):
            flow["source_names"] = names

    def _add_service(self, flow: Flow, event: MonitorEvent, summary: str) -> str:
        """Service traffic (per-packet path): name the service, its frontend and the backend chosen.
        A request carries the backend as its destination; a reply carries the frontend as its source."""
        service = self._services(event.rev_nat_id)
        if service is None:
            return summary
        ref = {"name": service["name"], "namespace": service["namespace"]}
        packet = event.packet
        reply = packet.source == service["address"]
        flow["source_service" if reply else "destination_service"] = ref
        port = packet.l4.source_port if reply and packet.l4 else packet.l4.destination_port if packet.l4 else 0
        backend = None if reply else host_port(packet.destination, port)
        flow["service"] = {"name": service["name"], "namespace": service["namespace"],
                           "frontend": service["frontend"], **({"backend": backend} if backend else {})}
        via = f"service {service['service']} {service['frontend']}" + (f" -> {backend}" if backend else " (reply)")
        return f"{summary}; {via}" if summary else via

    def build_sock(self, event: SockEvent, endpoints: EndpointLookup | None = None,
                   netns: NetnsLookup | None = None, flow_id: str | None = None) -> Flow:
        """A socket-level translation (Hubble's SOCK flow): frontend -> backend, once per connection."""
        timestamp = datetime.fromtimestamp((self._boot_time_ns + event.ktime_ns) / 1e9, tz=UTC)
        service = self._services(event.rev_nat_id)
        client = (netns or self._netns)(event.netns_cookie)
        destination = self._endpoint(event.backend, 0, endpoints)
        frontend = host_port(event.frontend, event.frontend_port)
        backend = host_port(event.backend, event.backend_port)
        flow: Flow = {
            "time": timestamp.isoformat().replace("+00:00", "Z"),
            "uuid": flow_id or str(uuid.uuid4()),
            "verdict": "TRANSLATED",
            "Type": "SOCK",
            "node_name": self.node_name,
            "event_type": {"type": 131},  # Hubble's sock trace event
            "sock_xlation_point": event.point,
            "socket_cookie": event.socket_cookie,
            "cgroup_id": event.cgroup_id,
            "source": {**(_view(client) if client else {}), "netns_cookie": event.netns_cookie},
            "destination": destination,
            "IP": {"destination": event.frontend, "destination_xlated": event.backend},
            "l4": {event.protocol: {"destination_port": event.backend_port}},
            "service": {"frontend": frontend, "backend": backend,
                        **({"name": service["name"], "namespace": service["namespace"]} if service else {})},
            "Summary": f"{event.protocol} {frontend} -> {backend}"
                       + (f" (service {service['service']})" if service else ""),
        }
        if service:
            flow["destination_service"] = {"name": service["name"], "namespace": service["namespace"]}
        return flow

    def _policy(self, event: MonitorEvent) -> dict[str, Any]:
        """The policy entry that decided, or what decided without one."""
        rule = self._rules(event.rule_id) if event.rule_id else None
        if rule is not None:
            ref = "/".join(p for p in (rule["kind"], rule["namespace"], rule["name"]) if p)
            return {**rule, "decision": f"{ref} {rule['rule']}"}
        if event.is_drop and event.drop_reason_name == "POLICY_NOT_INSTALLED":
            return {"decision": "policy not installed (fail closed)"}
        if event.is_policy_verdict and event.policy_verdict == "allowed":
            return {"decision": "allow-localhost" if event.src_identity == ReservedIdentity.HOST else "no enforcement"}
        return {"decision": "default deny"}


_EVENT_TYPE = {1: 4, 2: 1, 3: 5}  # trace, drop, policy verdict -> Hubble's event type numbers


def _view(view: EndpointView) -> dict[str, Any]:
    return {"ID": view.id, "identity": view.identity, "namespace": view.namespace, "labels": view.labels,
            "pod_name": view.pod_name}


def _verdict(event: MonitorEvent) -> str:
    if event.is_policy_verdict:
        if event.audited:
            return "AUDIT"
        return "FORWARDED" if event.policy_verdict == "allowed" else "DROPPED"
    return "DROPPED" if event.type == EVENT_DROP else "FORWARDED"
