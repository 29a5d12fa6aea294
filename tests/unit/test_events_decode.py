"""Event decoding and flows built from events (the C side of the layouts and tables:
tests/kernel/test_datapath_contract.py)."""

from __future__ import annotations

import struct

from cilia.flows.build import EndpointView, FlowBuilder
from cilia.flows.filter import FlowFilter
from cilia.monitor.events import EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, HEADER_SIZE, decode


def tcp_syn_v4() -> bytes:
    eth = bytes.fromhex("020000000002" "020000000001" "0800")
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, bytes([10, 200, 1, 2]), bytes([10, 200, 1, 3]))
    tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, 0x50, 0x02, 65535, 0, 0)
    return eth + ip + tcp


def record(etype: int, subtype: int, packet: bytes, line: int = 0, ct: int = 1, direction: int = 1,
           slot: int = 0) -> bytes:
    """`slot`: the record's rule id / rev-NAT id word."""
    header = struct.pack("<QBBBBHHIIIIHHI", 123, etype, subtype, 1, ct, line, 7, 4, 256, 257, len(packet),
                         len(packet), direction, slot)
    assert len(header) == HEADER_SIZE
    return header + packet.ljust(128, b"\0")


def test_decode_trace_and_drop() -> None:
    trace = decode(record(EVENT_TRACE, 1, tcp_syn_v4()))
    assert trace.observation_point == "TO_ENDPOINT" and trace.ct_status == "new"
    assert trace.packet.source == "10.200.1.2" and trace.packet.l4 is not None
    assert trace.packet.l4.destination_port == 80 and trace.packet.l4.tcp_flags == {"SYN"}
    drop = decode(record(EVENT_DROP, 132, tcp_syn_v4(), line=99))
    assert drop.drop_reason_name == "INVALID_SOURCE_IP" and drop.source_line == 99


def test_flow_has_hubble_fields_and_filters() -> None:
    views = {"10.200.1.2": EndpointView(7, 256, "default", "client", ["k8s:app=client"])}
    builder = FlowBuilder("n1", views.get, lambda i: ["reserved:world="], 0)
    flow = builder.build(decode(record(EVENT_TRACE, 1, tcp_syn_v4())))
    assert flow["verdict"] == "FORWARDED" and flow["trace_observation_point"] == "TO_ENDPOINT"
    assert flow["source"]["pod_name"] == "client" and flow["IP"]["ipVersion"] == "IPv4"
    assert flow["l4"]["TCP"]["flags"] == {"SYN": True} and flow["traffic_direction"] == "EGRESS"
    assert FlowFilter(pod=["default/client"], port=["80"]).matches(flow)
    assert not FlowFilter(verdict=["DROPPED"]).matches(flow)
    assert FlowFilter(label=["app=client"], protocol=["tcp"]).matches(flow)
    drop = builder.build(decode(record(EVENT_DROP, 132, tcp_syn_v4(), line=5)))
    assert drop["verdict"] == "DROPPED" and drop["drop_reason_desc"] == "INVALID_SOURCE_IP"
    assert drop["file"] == {"name": "bpf_lxc.c", "line": 5}


def test_one_direction_encoding_0_ingress_1_egress() -> None:
    assert decode(record(EVENT_TRACE, 1, tcp_syn_v4(), direction=0)).direction == "INGRESS"
    assert decode(record(EVENT_TRACE, 1, tcp_syn_v4(), direction=1)).direction == "EGRESS"
    assert decode(record(EVENT_TRACE, 1, tcp_syn_v4(), direction=7)).direction == "TRAFFIC_DIRECTION_UNKNOWN"


def test_the_slot_is_a_rev_nat_id_in_traces_and_a_rule_id_in_policy_events() -> None:
    trace = decode(record(EVENT_TRACE, 1, tcp_syn_v4(), slot=5))
    assert (trace.rule_id, trace.rev_nat_id) == (0, 5)
    assert trace.to_dict()["rule_id"] == 0 and trace.to_dict()["rev_nat_id"] == 5
    drop = decode(record(EVENT_DROP, 181, tcp_syn_v4(), slot=9))
    assert (drop.rule_id, drop.rev_nat_id) == (9, 0)
    verdict = decode(record(EVENT_POLICY_VERDICT, 2, tcp_syn_v4(), slot=9))
    assert (verdict.rule_id, verdict.rev_nat_id) == (9, 0)


def test_flows_look_services_up_by_rev_nat_id_and_rules_by_rule_id() -> None:
    services = {5: {"service": "default/web", "namespace": "default", "name": "web", "address": "10.96.0.10",
                    "port": 80, "protocol": "TCP", "frontend": "10.96.0.10:80"}}
    rules = {9: {"kind": "CiliumNetworkPolicy", "namespace": "default", "name": "deny", "rule": "ingressDeny[0]",
                 "id": 9}}
    asked: list[tuple[str, int]] = []

    def service(rev_nat_id: int) -> dict[str, object] | None:
        asked.append(("service", rev_nat_id))
        return services.get(rev_nat_id)

    def rule(rule_id: int) -> dict[str, object] | None:
        asked.append(("rule", rule_id))
        return rules.get(rule_id)

    builder = FlowBuilder("n1", lambda _ip: None, lambda _i: [], 0, rule, service)
    flow = builder.build(decode(record(EVENT_TRACE, 1, tcp_syn_v4(), slot=5)))
    assert flow["service"]["name"] == "web" and flow["destination_service"] == {"name": "web", "namespace": "default"}
    assert asked == [("service", 5)]
    asked.clear()
    drop = builder.build(decode(record(EVENT_DROP, 181, tcp_syn_v4(), direction=0, slot=9)))
    assert drop["ingress_denied_by"][0]["name"] == "deny" and "service" not in drop
    assert asked == [("rule", 9)]


def test_ring_makes_lazy_flows_once_and_only_when_read() -> None:
    from cilia.flows.ring import FlowRing

    made: list[int] = []

    def maker(n: int) -> object:
        def make() -> dict[str, object] | None:
            made.append(n)
            return None if n == 2 else {"verdict": "FORWARDED", "n": n}
        return make

    ring = FlowRing(3)
    for n in range(5):
        ring.add_lazy(maker(n))  # type: ignore[arg-type]
    assert made == [] and len(ring) == 3  # nothing decoded on arrival; the oldest two fell out unmade
    assert [f["n"] for f in ring.last(10, FlowFilter())] == [3, 4]  # 2 was undecodable: skipped
    assert made == [2, 3, 4]
    ring.last(10, FlowFilter())
    assert made == [2, 3, 4]  # made once, kept
