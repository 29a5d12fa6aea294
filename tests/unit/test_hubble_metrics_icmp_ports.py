"""Hubble's `icmp` and `port-distribution` metrics: the handlers' labels against a reference
computed from the converted flow.Flow the way upstream's Go handlers compute them, gopacket's
ICMP type names, the options (contexts, labelsContext), the series on the wire, deleted pods."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tests.unit.test_hubble_convert import (
    CLIENT,
    EGRESS,
    INGRESS,
    SERVER,
    builder,
    eth,
    icmp6_echo,
    record,
    tcp_v4,
    udp_v4,
)

from cilia.hubble.convert import convert
from cilia.hubble.metrics.handlers import HANDLERS
from cilia.hubble.metrics.icmp import IcmpHandler, type_code_name
from cilia.hubble.metrics.options import SUPPORTED, UPSTREAM_ONLY, MetricsOptionError, parse_metrics
from cilia.hubble.metrics.port_distribution import PortDistributionHandler, is_reply
from cilia.hubble.metrics.processor import FlowMetrics
from cilia.hubble.pb import flow_pb2
from cilia.monitor.events import EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, decode


def icmp4(icmp_type: int = 8, code: int = 0, src: str = CLIENT, dst: str = SERVER) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 1, 0, bytes(map(int, src.split("."))),
                     bytes(map(int, dst.split("."))))
    return eth(0x0800) + ip + struct.pack("!BBHHH", icmp_type, code, 0, 1, 1)


def icmp6(icmp_type: int, code: int = 0) -> bytes:
    packet = bytearray(icmp6_echo())
    packet[14 + 40] = icmp_type
    packet[14 + 41] = code
    return bytes(packet)


# ----- gopacket's names --------------------------------------------------------------------------
@pytest.mark.parametrize(("family", "icmp_type", "code", "name"), [
    ("IPv4", 8, 0, "EchoRequest"),
    ("IPv4", 0, 0, "EchoReply"),
    ("IPv4", 8, 3, "EchoRequest(Code: 3)"),  # a type that uses no code, given one anyway
    ("IPv4", 3, 3, "DestinationUnreachable(Port)"),
    ("IPv4", 3, 13, "DestinationUnreachable(CommAdminProhibited)"),
    ("IPv4", 3, 99, "DestinationUnreachable(Code: 99)"),
    ("IPv4", 5, 2, "Redirect(TOS+Net)"),
    ("IPv4", 11, 0, "TimeExceeded(TTLExceeded)"),
    ("IPv4", 12, 2, "ParameterProblem(BadLength)"),
    ("IPv4", 42, 1, "42(1)"),
    ("IPv6", 128, 0, "EchoRequest"),
    ("IPv6", 129, 0, "EchoReply"),
    ("IPv6", 1, 4, "DestinationUnreachable(PortUnreachable)"),
    ("IPv6", 2, 0, "PacketTooBig"),
    ("IPv6", 3, 0, "TimeExceeded(HopLimitExceeded)"),
    ("IPv6", 135, 0, "NeighborSolicitation"),
    ("IPv6", 136, 0, "NeighborAdvertisement"),
    ("IPv6", 130, 0, "130(0)"),  # MLD query: gopacket's table does not name it
    ("IPv6", 8, 0, "8(0)"),  # v4's echo request number is not a v6 type
])
def test_type_names_are_gopackets(family: str, icmp_type: int, code: int, name: str) -> None:
    assert type_code_name(family, icmp_type, code) == name


# ----- the handlers against upstream's rules on the wire flow ------------------------------------
def upstream_icmp(f: flow_pb2.Flow) -> list[tuple[str, ...]]:
    if not f.HasField("l4"):
        return []
    out: list[tuple[str, ...]] = []
    if f.l4.HasField("ICMPv4"):
        out.append(("IPv4", type_code_name("IPv4", f.l4.ICMPv4.type, f.l4.ICMPv4.code)))
    if f.l4.HasField("ICMPv6"):
        out.append(("IPv6", type_code_name("IPv6", f.l4.ICMPv6.type, f.l4.ICMPv6.code)))
    return out


def upstream_ports(f: flow_pb2.Flow) -> list[tuple[str, ...]]:
    if f.verdict not in (flow_pb2.FORWARDED, flow_pb2.REDIRECTED) or not f.HasField("l4"):
        return []
    if not f.HasField("is_reply") or f.is_reply.value:
        return []
    which = f.l4.WhichOneof("protocol")
    if which in ("TCP", "UDP", "SCTP"):
        return [(which, str(getattr(f.l4, which).destination_port))]
    return [(which, "0")] if which else []


RECORDS = [
    record(EVENT_TRACE, 0, icmp4(8)),  # echo request to-endpoint, conntrack new
    record(EVENT_TRACE, 5, icmp4(0, src=SERVER, dst=CLIENT), ct=3),  # echo reply
    record(EVENT_TRACE, 0, icmp4(3, 3), ct=0),  # port unreachable, no conntrack verdict
    record(EVENT_TRACE, 0, icmp4(11, 0)),
    record(EVENT_TRACE, 0, icmp6_echo()),
    record(EVENT_TRACE, 5, icmp6(129), ct=3),
    record(EVENT_TRACE, 0, icmp6(135)),
    record(EVENT_DROP, 133, icmp4(8), direction=INGRESS, rule_id=5),
    record(EVENT_DROP, 133, icmp6_echo(), direction=INGRESS),
    record(EVENT_TRACE, 0, tcp_v4(0x02)),  # SYN to port 80
    record(EVENT_TRACE, 3, tcp_v4(0x12, SERVER, CLIENT, 80, 40000), ct=3),  # the SYN-ACK: a reply
    record(EVENT_TRACE, 2, tcp_v4(0x10, dport=8080), ct=0),  # no conntrack verdict: direction unknown
    record(EVENT_TRACE, 0, tcp_v4(0x10, dport=443), ct=2),  # established
    record(EVENT_TRACE, 0, udp_v4()),
    record(EVENT_DROP, 133, tcp_v4(), direction=INGRESS, rule_id=5),
    record(EVENT_POLICY_VERDICT, 1, tcp_v4(dport=8443), direction=EGRESS, rule_id=5),  # allowed
    record(EVENT_POLICY_VERDICT, 3, tcp_v4(), direction=INGRESS),  # denied
    record(EVENT_POLICY_VERDICT, 0x80 | 3, tcp_v4(dport=9090), direction=INGRESS),  # audited
]


def flows() -> list[dict[str, Any]]:
    b = builder()
    return [b.build(decode(raw)) for raw in RECORDS]


@pytest.mark.parametrize("index", range(len(RECORDS)))
def test_handlers_match_upstream_on_the_converted_flow(index: int) -> None:
    flow = flows()[index]
    wire = convert(flow)
    assert IcmpHandler().series(flow) == upstream_icmp(wire)
    assert PortDistributionHandler().series(flow) == upstream_ports(wire)
    assert is_reply(flow) == (wire.is_reply.value if wire.HasField("is_reply") else None)


def test_what_counts_and_what_does_not() -> None:
    ports = PortDistributionHandler()
    counted = [labels for flow in flows() for labels in ports.series(flow)]
    # the SYN, the established segment, the allowed verdict, the ICMP requests; not the replies,
    # not drops, denied or audited verdicts (AUDIT is neither FORWARDED nor REDIRECTED), not the
    # flow whose direction is unknown
    assert sorted(counted) == sorted([("ICMPv4", "0"), ("ICMPv4", "0"), ("ICMPv6", "0"), ("ICMPv6", "0"),
                                      ("TCP", "80"), ("TCP", "443"), ("UDP", "53"), ("TCP", "8443")])
    icmp = IcmpHandler()
    counted = [labels for flow in flows() for labels in icmp.series(flow)]
    assert counted.count(("IPv4", "EchoRequest")) == 2  # forwarded and dropped alike
    assert ("IPv6", "EchoReply") in counted and ("IPv6", "NeighborSolicitation") in counted
    assert ("IPv4", "DestinationUnreachable(Port)") in counted and ("IPv4", "TimeExceeded(TTLExceeded)") in counted


def test_synthetic_dicts() -> None:
    icmp = IcmpHandler()
    assert icmp.series({"l4": {"ICMPv6": {"type": 1, "code": 3}}}) == \
        [("IPv6", "DestinationUnreachable(AddressUnreachable)")]
    assert icmp.series({"l4": {"TCP": {"destination_port": 80}}}) == []
    assert icmp.series({}) == []
    ports = PortDistributionHandler()
    base: dict[str, Any] = {"verdict": "FORWARDED", "event_type": {"type": 4}, "is_reply": False}
    assert ports.series({**base, "l4": {"SCTP": {"destination_port": 36412}}}) == [("SCTP", "36412")]
    assert ports.series({**base, "verdict": "REDIRECTED", "l4": {"TCP": {"destination_port": 80}}}) == [("TCP", "80")]
    assert ports.series({**base, "verdict": "AUDIT", "l4": {"TCP": {"destination_port": 80}}}) == []
    assert ports.series({**base, "l4": {}}) == []
    no_reply = {k: v for k, v in base.items() if k != "is_reply"}
    assert ports.series({**no_reply, "l4": {"UDP": {"destination_port": 53}}}) == []


# ----- options and the wire ----------------------------------------------------------------------
def scrape(metrics: FlowMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_served_and_registered() -> None:
    assert {"icmp", "port-distribution"} <= set(SUPPORTED) and not {"icmp", "port-distribution"} & set(UPSTREAM_ONLY)
    assert HANDLERS["icmp"]().metric == "hubble_icmp"
    assert HANDLERS["port-distribution"]().metric == "hubble_port_distribution"
    [icmp, ports] = parse_metrics("icmp:sourceContext=pod;destinationContext=namespace|pod "
                                  "port-distribution:destinationContext=pod;labelsContext=source_namespace,"
                                  "traffic_direction")
    assert icmp.context.label_names() == ["source", "destination"]
    assert ports.context.label_names() == ["destination", "source_namespace", "traffic_direction"]
    with pytest.raises(MetricsOptionError, match="port-distribution: sourceContext=nope"):
        parse_metrics("port-distribution:sourceContext=nope")


def test_names_labels_and_help_on_the_wire() -> None:
    metrics = FlowMetrics(parse_metrics("icmp:sourceContext=pod;destinationContext=pod "
                                        "port-distribution:sourceContext=namespace;destinationContext=namespace"))
    for flow in flows():
        metrics.process(flow)
    samples = scrape(metrics)
    assert samples[("hubble_icmp_total", (("destination", "x/server"), ("family", "IPv4"), ("source", "x/client"),
                                          ("type", "EchoRequest")))] == 2
    assert samples[("hubble_icmp_total", (("destination", "x/client"), ("family", "IPv4"), ("source", "x/server"),
                                          ("type", "EchoReply")))] == 1
    assert samples[("hubble_port_distribution_total", (("destination", "x"), ("port", "80"), ("protocol", "TCP"),
                                                       ("source", "x")))] == 1
    assert ("hubble_port_distribution_total", (("destination", "x"), ("port", "40000"), ("protocol", "TCP"),
                                               ("source", "x"))) not in samples  # the reply's port
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    text = generate_latest(registry).decode()
    assert "# HELP hubble_icmp_total Number of ICMP messages" in text
    assert "# HELP hubble_port_distribution_total Numbers of packets distributed by destination port" in text
    assert "# TYPE hubble_port_distribution_total counter" in text


def test_deleted_pods_series_go() -> None:
    now = [0.0]
    metrics = FlowMetrics(parse_metrics("icmp:destinationContext=pod port-distribution:labelsContext="
                                        "destination_namespace,destination_pod"), pod_grace=60, clock=lambda: now[0])
    metrics.set_pods({("x", "client"), ("x", "server")})
    for flow in flows():
        metrics.process(flow)
    metrics.set_pods({("x", "client")})  # server deleted
    now[0] = 61
    assert metrics.expire() > 0
    remaining = scrape(metrics)
    assert not any(dict(labels).get("destination") == "x/server" for _name, labels in remaining)
    assert not any(dict(labels).get("destination_pod") == "server" for _name, labels in remaining)
    assert any(name == "hubble_icmp_total" and dict(labels).get("destination") == "x/client"
               for name, labels in remaining)
