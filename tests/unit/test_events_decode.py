"""Event decoding, the C/Python drop reason table, and flows built from events."""

from __future__ import annotations

import re
import struct
from pathlib import Path

from cilia.flows.build import EndpointView, FlowBuilder
from cilia.flows.filter import FlowFilter
from cilia.monitor.events import DROP_REASONS, EVENT_DROP, EVENT_TRACE, HEADER_SIZE, decode

ROOT = Path(__file__).resolve().parents[2]


def tcp_syn_v4() -> bytes:
    eth = bytes.fromhex("020000000002" "020000000001" "0800")
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, bytes([10, 200, 1, 2]), bytes([10, 200, 1, 3]))
    tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, 0x50, 0x02, 65535, 0, 0)
    return eth + ip + tcp


def record(etype: int, subtype: int, packet: bytes, line: int = 0, ct: int = 1, flags: int = 1) -> bytes:
    header = struct.pack("<QBBBBHHIIIIHHI", 123, etype, subtype, 1, ct, line, 7, 4, 256, 257, len(packet),
                         len(packet), flags, 0)
    assert len(header) == HEADER_SIZE
    return header + packet.ljust(128, b"\0")


def test_drop_reasons_match_the_c_header() -> None:
    header = (ROOT / "bpf/lib/drop_reasons.h").read_text()
    in_c = {int(v): k for k, v in re.findall(r"#define DROP_(\w+) (\d+)", header)}
    assert {code: name for code, (name, _desc) in DROP_REASONS.items()} == in_c


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
