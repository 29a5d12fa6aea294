"""Datapath records -> cilia flows -> Hubble flow.Flow messages: every field cilia knows, with
Hubble's numbering (drop reasons, monitor event types, trace observation points)."""

from __future__ import annotations

import struct
from typing import Any

from cilia.flows.build import EndpointView, FlowBuilder
from cilia.hubble.convert import DROP_REASONS, convert
from cilia.hubble.pb import flow_pb2
from cilia.maps.direction import TrafficDirection
from cilia.monitor.events import DROP_REASONS as CILIA_DROP_REASONS
from cilia.monitor.events import EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, SockEvent, decode

INGRESS, EGRESS = TrafficDirection.INGRESS, TrafficDirection.EGRESS  # the record's direction word
CLIENT, SERVER = "10.200.1.2", "10.200.1.3"
BOOT_NS = 1_700_000_000 * 10**9


def eth(ethertype: int) -> bytes:
    return bytes.fromhex("020000000002" "020000000001") + struct.pack("!H", ethertype)


def tcp_v4(flags: int = 0x02, src: str = CLIENT, dst: str = SERVER, sport: int = 40000, dport: int = 80) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, bytes(map(int, src.split("."))),
                     bytes(map(int, dst.split("."))))
    return eth(0x0800) + ip + struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 65535, 0, 0)


def udp_v4() -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0, bytes([10, 200, 1, 2]), bytes([10, 200, 1, 3]))
    return eth(0x0800) + ip + struct.pack("!HHHH", 5353, 53, 8, 0)


def icmp6_echo() -> bytes:
    src = bytes.fromhex("fd000000000000000000000000000002")
    dst = bytes.fromhex("fd000000000000000000000000000003")
    ip6 = struct.pack("!IHBB16s16s", 0x60000000, 8, 58, 64, src, dst)
    return eth(0x86DD) + ip6 + struct.pack("!BBHHH", 128, 0, 0, 1, 1)


def record(etype: int, subtype: int, packet: bytes, *, ct: int = 1, direction: int = EGRESS, line: int = 0,
           rule_id: int = 0, src_id: int = 256, dst_id: int = 257) -> bytes:
    header = struct.pack("<QBBBBHHIIIIHHI", 5_000_000, etype, subtype, 1, ct, line, 7, 4, src_id, dst_id,
                         len(packet), len(packet), direction, rule_id)
    return header + packet.ljust(128, b"\0")


VIEWS = {
    CLIENT: EndpointView(7, 256, "x", "client", ["k8s:app=client", "k8s:io.kubernetes.pod.namespace=x",
                                                 "k8s:io.cilium.k8s.policy.cluster=default"]),
    SERVER: EndpointView(9, 257, "x", "server", ["k8s:app=server", "k8s:io.kubernetes.pod.namespace=x"]),
}
RULES = {5: {"kind": "CiliumNetworkPolicy", "namespace": "x", "name": "deny-client", "rule": "ingress[0]",
             "id": 5}}
SERVICES = {3: {"service": "x/web", "namespace": "x", "name": "web", "address": "10.96.0.10", "port": 80,
                "protocol": "TCP", "frontend": "10.96.0.10:80"}}


def builder() -> FlowBuilder:
    return FlowBuilder("n1", VIEWS.get, lambda i: ["reserved:world="] if i == 2 else [], BOOT_NS,
                       RULES.get, SERVICES.get)


def flow_of(raw: bytes) -> flow_pb2.Flow:
    return convert(builder().build(decode(raw)))


def test_trace_flow_fills_every_field_cilia_knows() -> None:
    f = flow_of(record(EVENT_TRACE, 1, tcp_v4()))
    assert f.time.ToNanoseconds() == BOOT_NS + 5_000_000
    assert len(f.uuid) == 36
    assert f.verdict == flow_pb2.FORWARDED and f.Type == flow_pb2.L3_L4 and f.node_name == "n1"
    assert (f.ethernet.source, f.ethernet.destination) == ("02:00:00:00:00:01", "02:00:00:00:00:02")
    assert (f.IP.source, f.IP.destination, f.IP.ipVersion) == (CLIENT, SERVER, flow_pb2.IPv4)
    assert f.l4.WhichOneof("protocol") == "TCP"
    assert (f.l4.TCP.source_port, f.l4.TCP.destination_port) == (40000, 80)
    assert f.l4.TCP.flags == flow_pb2.TCPFlags(SYN=True)
    assert (f.source.ID, f.source.identity, f.source.namespace, f.source.pod_name) == (7, 256, "x", "client")
    assert list(f.source.labels) == ["k8s:app=client", "k8s:io.kubernetes.pod.namespace=x",
                                     "k8s:io.cilium.k8s.policy.cluster=default"]
    assert f.source.cluster_name == "default"
    assert (f.destination.ID, f.destination.pod_name, f.destination.identity) == (9, "server", 257)
    # monitor API: trace is type 4, and to-endpoint is observation point 0 there (101 in the enum)
    assert (f.event_type.type, f.event_type.sub_type) == (4, 0)
    assert f.trace_observation_point == flow_pb2.TO_ENDPOINT
    assert f.trace_reason == flow_pb2.NEW
    assert f.HasField("is_reply") and f.is_reply.value is False
    assert f.traffic_direction == flow_pb2.EGRESS
    assert f.interface.index == 4
    assert f.Summary == "TCP Flags: SYN"
    assert (f.emitter.name, f.drop_reason_desc) == ("Cilia", flow_pb2.DROP_REASON_UNKNOWN)


def test_reply_and_unknown_conntrack_state() -> None:
    reply = flow_of(record(EVENT_TRACE, 3, tcp_v4(0x12, SERVER, CLIENT, 80, 40000), ct=3))
    assert reply.is_reply.value is True and reply.reply is True and reply.trace_reason == flow_pb2.REPLY
    assert reply.trace_observation_point == flow_pb2.FROM_ENDPOINT and reply.event_type.sub_type == 5
    assert reply.l4.TCP.flags == flow_pb2.TCPFlags(SYN=True, ACK=True)
    unknown = flow_of(record(EVENT_TRACE, 2, tcp_v4(), ct=0))
    assert not unknown.HasField("is_reply") and unknown.trace_reason == flow_pb2.TRACE_REASON_UNKNOWN
    assert unknown.trace_observation_point == flow_pb2.TO_STACK and unknown.event_type.sub_type == 3


def test_policy_drop_names_reason_and_policy() -> None:
    f = flow_of(record(EVENT_DROP, 133, tcp_v4(), direction=INGRESS, line=42, rule_id=5))
    assert f.verdict == flow_pb2.DROPPED
    assert (f.drop_reason, f.drop_reason_desc) == (133, flow_pb2.POLICY_DENIED)
    assert (f.event_type.type, f.event_type.sub_type) == (1, 133)
    assert f.traffic_direction == flow_pb2.INGRESS
    assert (f.file.name, f.file.line) == ("bpf_lxc.c", 42)
    assert not f.HasField("is_reply")  # a drop before conntrack knows
    [policy] = f.ingress_denied_by
    assert (policy.name, policy.namespace, policy.kind) == ("deny-client", "x", "CiliumNetworkPolicy")
    assert "k8s:io.cilium.k8s.policy.name=deny-client" in policy.labels
    assert not f.egress_denied_by and not f.ingress_allowed_by
    assert f.Summary.startswith("Policy denied")


def test_every_cilia_drop_code_maps_to_a_hubble_reason_by_meaning() -> None:
    assert set(DROP_REASONS) == set(CILIA_DROP_REASONS)
    expected = {143: flow_pb2.CT_MAP_INSERTION_FAILED, 154: flow_pb2.UNSUPPORTED_L2_PROTOCOL,
                164: flow_pb2.TTL_EXCEEDED, 181: flow_pb2.POLICY_DENY, 158: flow_pb2.SERVICE_BACKEND_NOT_FOUND,
                220: flow_pb2.NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION,
                221: flow_pb2.SOCKET_LOOKUP_FAILED}
    for code, reason in expected.items():
        f = flow_of(record(EVENT_DROP, code, tcp_v4()))
        assert (f.drop_reason_desc, f.drop_reason, f.event_type.sub_type) == (reason, reason, reason)


def test_policy_verdicts() -> None:
    denied = flow_of(record(EVENT_POLICY_VERDICT, 2, tcp_v4(), direction=INGRESS, rule_id=5))
    assert (denied.event_type.type, denied.event_type.sub_type) == (5, 0)
    assert denied.verdict == flow_pb2.DROPPED and denied.drop_reason_desc == flow_pb2.POLICY_DENY
    assert [p.name for p in denied.ingress_denied_by] == ["deny-client"]
    default_denied = flow_of(record(EVENT_POLICY_VERDICT, 3, tcp_v4(), direction=INGRESS))
    assert default_denied.drop_reason_desc == flow_pb2.POLICY_DENIED and not default_denied.ingress_denied_by
    allowed = flow_of(record(EVENT_POLICY_VERDICT, 1, tcp_v4(), direction=EGRESS, rule_id=5))
    assert allowed.verdict == flow_pb2.FORWARDED and allowed.drop_reason_desc == flow_pb2.DROP_REASON_UNKNOWN
    assert [p.name for p in allowed.egress_allowed_by] == ["deny-client"]
    audited = flow_of(record(EVENT_POLICY_VERDICT, 0x80 | 3, tcp_v4(), direction=INGRESS))
    assert audited.verdict == flow_pb2.AUDIT


def test_udp_and_icmpv6() -> None:
    udp = flow_of(record(EVENT_TRACE, 1, udp_v4()))
    assert udp.l4.WhichOneof("protocol") == "UDP" and (udp.l4.UDP.source_port, udp.l4.UDP.destination_port) == (
        5353, 53)
    icmp = flow_of(record(EVENT_TRACE, 1, icmp6_echo()))
    assert icmp.l4.WhichOneof("protocol") == "ICMPv6" and (icmp.l4.ICMPv6.type, icmp.l4.ICMPv6.code) == (128, 0)
    assert icmp.IP.ipVersion == flow_pb2.IPv6 and icmp.Summary == "ICMPv6 EchoRequest"
    world = icmp.destination
    assert world.identity == 257 and not world.pod_name


def test_identity_labels_without_value_are_written_as_cilium_does() -> None:
    f = flow_of(record(EVENT_TRACE, 1, tcp_v4(src="10.0.0.9"), src_id=2))
    assert list(f.source.labels) == ["reserved:world"] and f.source.identity == 2


def test_service_names() -> None:
    f = flow_of(record(EVENT_TRACE, 1, tcp_v4(), rule_id=3))
    assert (f.destination_service.name, f.destination_service.namespace) == ("web", "x")
    assert not f.HasField("source_service")


def test_socket_translation_flow() -> None:
    event = SockEvent(5_000_000, "SOCK_XLATE_POINT_PRE_DIRECTION_FWD", "TCP", 3, 77, 88, 99, "10.96.0.10", 80,
                      SERVER, 8080, 1)
    f = convert(builder().build_sock(event))
    assert (f.Type, f.verdict) == (flow_pb2.SOCK, flow_pb2.TRANSLATED)
    assert f.event_type.type == 7  # Hubble's MessageTypeTraceSock
    assert f.sock_xlate_point == flow_pb2.SOCK_XLATE_POINT_PRE_DIRECTION_FWD
    assert (f.socket_cookie, f.cgroup_id) == (77, 99)
    assert f.IP.destination == "10.96.0.10" and f.IP.ipVersion == flow_pb2.IPv4
    assert f.destination_service.name == "web" and f.destination.pod_name == "server"


def test_wire_round_trip_and_unknown_names_tolerated() -> None:
    f = flow_of(record(EVENT_DROP, 133, tcp_v4(), direction=INGRESS, rule_id=5))
    assert flow_pb2.Flow.FromString(f.SerializeToString()) == f
    odd: dict[str, Any] = {"verdict": "SOMETHING_NEW", "traffic_direction": "SIDEWAYS", "Type": "L9",
                           "event_type": {"type": 1}, "drop_reason": 250}
    g = convert(odd)
    assert (g.verdict, g.traffic_direction, g.Type) == (0, 0, 0)
    assert (g.drop_reason, g.drop_reason_desc) == (250, flow_pb2.DROP_REASON_UNKNOWN)
