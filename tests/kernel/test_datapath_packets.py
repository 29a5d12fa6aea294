"""bpf_lxc through BPF_PROG_RUN: real packets through the real programs, verdicts and rewrites checked."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from cilia.bpf import BpfObject
from cilia.datapath import EndpointConfig, default_bpf_dir
from cilia.maps.ct import CtMap
from cilia.maps.endpoints import EndpointInfo, EndpointsMap
from cilia.maps.policy import PolicyMaps
from cilia.monitor.events import decode
from cilia.policy.mapstate import DirectionState, MapState
from cilia.testing.bpf import RingEvents
from cilia.testing.packets import (
    LXC_MAC,
    PEER,
    PEER6,
    PEER_LXC_MAC,
    PEER_MAC,
    POD,
    POD6,
    POD_MAC,
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    WORLD,
    csum,
    mac,
    tcp_packet,
)


def ipv4_tcp(src: str, dst: str, flags: int = 0x02, ttl: int = 64) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, 0x50, flags, 65535, 0, 0)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, ttl, 6, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    header = header[:10] + struct.pack("!H", csum(header)) + header[12:]
    return mac(LXC_MAC) + mac(POD_MAC) + b"\x08\x00" + header + tcp


def arp_request(target: str) -> bytes:
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac(POD_MAC), ipaddress.IPv4Address(POD).packed,
                       b"\0" * 6, ipaddress.IPv4Address(target).packed)
    return b"\xff" * 6 + mac(POD_MAC) + b"\x08\x06" + body


@pytest.fixture
def lxc(pin_dir: Path) -> Iterator[tuple[BpfObject, RingEvents]]:
    """bpf_lxc for endpoint 1 (POD) with a local peer (PEER), and a reader of its events that is
    closed when the test ends."""
    config = EndpointConfig(
        endpoint_id=1, identity=256, lxc_ifindex=4, lxc_mac=LXC_MAC, pod_mac=POD_MAC,
        pod_ipv4=ipaddress.IPv4Address(POD), pod_ipv6=ipaddress.IPv6Address("fd00:200:1::2"),
        router_ipv4=ipaddress.IPv4Address("10.200.1.1"), router_ipv6=ipaddress.IPv6Address("fd00:200:1::1"),
        aggregation=0,
    )
    obj = BpfObject.open(default_bpf_dir() / "bpf_lxc.o", pin_root=pin_dir, rodata={"CONFIG": config.pack()},
                         max_entries={"cilia_ct_tcp_v1": 4096, "cilia_ct_any_v1": 4096})
    try:
        with RingEvents(obj.map("cilia_events_v1")) as events:
            allow_all(obj, 1, 2)
            EndpointsMap(obj.map("cilia_endpoints_v1")).upsert(
                ipaddress.IPv4Address(PEER), EndpointInfo(ifindex=6, endpoint_id=2, mac=PEER_MAC,
                                                           lxc_mac=PEER_LXC_MAC, identity=257))
            yield obj, events
    finally:
        obj.close()


def allow_all(obj: BpfObject, *endpoint_ids: int) -> None:
    """No policy selects these endpoints: everything passes without a lookup (no state = fail closed)."""
    policy = PolicyMaps(obj.map("cilia_policy_state_v1"), obj.map("cilia_policy_sel_v1"), obj.map("cilia_policy_v1"))
    for endpoint_id in endpoint_ids:
        policy.install(endpoint_id, MapState(DirectionState(), DirectionState()))


def run(obj: BpfObject, packet: bytes, program: str = "cil_from_container") -> tuple[int, bytes]:
    result = obj.program(program).test_run(packet)
    return result.retval, result.data_out


def test_arp_request_for_gateway_is_answered_with_lxc_mac(lxc: tuple[BpfObject, RingEvents]) -> None:
    obj, _ = lxc
    verdict, out = run(obj, arp_request("10.200.1.1"))
    assert verdict == TC_ACT_REDIRECT
    assert out[0:6] == mac(POD_MAC) and out[6:12] == mac(LXC_MAC)
    op, sha, sip = struct.unpack_from("!6xH6s4s", out, 14)
    assert op == 2 and sha == mac(LXC_MAC) and sip == ipaddress.IPv4Address("10.200.1.1").packed


def test_pod_to_local_pod_is_redirected_with_rewrites(lxc: tuple[BpfObject, RingEvents]) -> None:
    obj, events = lxc
    verdict, out = run(obj, ipv4_tcp(POD, PEER))
    assert verdict == TC_ACT_REDIRECT
    assert out[0:6] == mac(PEER_MAC) and out[6:12] == mac(PEER_LXC_MAC)
    assert out[14 + 8] == 63 and csum(out[14:34]) == 0  # TTL lowered, checksum still valid
    trace = decode(events.poll()[-1])
    assert trace.observation_point == "TO_ENDPOINT" and trace.ct_status == "new" and trace.dst_identity == 257


def _with_checksum(header: bytes, target: int) -> bytes:
    """`header` (IPv4, 20 bytes) with the IP id that makes its checksum `target`."""
    for ident in range(0x10000):
        candidate = header[:4] + struct.pack("!H", ident) + header[6:10] + b"\0\0" + header[12:]
        if csum(candidate) == target:
            return candidate[:10] + struct.pack("!H", target) + candidate[12:]
    raise AssertionError(f"no IP id gives checksum {target:#06x}")


# 0xfeff: the incremental update's end-around carry (the TTL's word is the checksum's high byte)
@pytest.mark.parametrize("checksum", [0xFEFF, 0xFEFE, 0xFF00, 0x0000, 0x00FF, 0x0100, 0x1234])
def test_the_router_hop_keeps_the_ipv4_checksum_right_at_every_carry(lxc: tuple[BpfObject, RingEvents],
                                                                     checksum: int) -> None:
    """The hop's TTL and MACs go in one store from a stack copy (lib/forward.h route_hop_helpers), the
    checksum updated incrementally: checksums next to the update's wrap-around still leave the
    checksum computed from scratch, and the bytes between the MACs and the checksum unchanged."""
    obj, _ = lxc
    packet = ipv4_tcp(POD, PEER, ttl=9)
    header = _with_checksum(packet[14:34], checksum)
    verdict, out = run(obj, packet[:14] + header + packet[34:])
    assert verdict == TC_ACT_REDIRECT
    assert out[0:6] == mac(PEER_MAC) and out[6:12] == mac(PEER_LXC_MAC) and out[12:14] == b"\x08\x00"
    assert out[14 + 8] == 8 and csum(out[14:34]) == 0
    # the checksum a router computes from scratch (0x0000, never its other zero 0xffff)
    assert out[24:26] == struct.pack("!H", csum(out[14:24] + b"\0\0" + out[26:34]))
    assert out[14:22] == header[:8] and out[14 + 9] == 6 and out[26:] == (header + packet[34:])[12:]


def test_pod_to_local_pod_over_ipv6_lowers_the_hop_limit_only(lxc: tuple[BpfObject, RingEvents]) -> None:
    """IPv6: the one store covers the hop limit and, unchanged, the header's first words and the
    start of the source address."""
    obj, _ = lxc
    EndpointsMap(obj.map("cilia_endpoints_v1")).upsert(
        ipaddress.IPv6Address(PEER6), EndpointInfo(ifindex=6, endpoint_id=2, mac=PEER_MAC, lxc_mac=PEER_LXC_MAC,
                                                   identity=257))
    packet = tcp_packet(POD6, PEER6, 40000, 80)
    verdict, out = run(obj, packet)
    assert verdict == TC_ACT_REDIRECT
    assert out[0:6] == mac(PEER_MAC) and out[6:12] == mac(PEER_LXC_MAC)
    assert out[14 + 7] == 63
    assert out[12:21] == packet[12:21] and out[22:] == packet[22:]


def test_spoofed_source_is_dropped_with_reason(lxc: tuple[BpfObject, RingEvents]) -> None:
    obj, events = lxc
    verdict, _ = run(obj, ipv4_tcp("10.200.1.99", PEER))
    assert verdict == TC_ACT_SHOT
    drop = decode(events.poll()[-1])
    assert drop.is_drop and drop.drop_reason_name == "INVALID_SOURCE_IP" and drop.source_line > 0


def test_world_goes_to_stack_and_reply_is_tracked(lxc: tuple[BpfObject, RingEvents]) -> None:
    obj, events = lxc
    assert run(obj, ipv4_tcp(POD, WORLD))[0] == TC_ACT_OK
    reply = ipv4_tcp(WORLD, POD, flags=0x12)
    reply = reply[:34] + struct.pack("!HH", 80, 40000) + reply[38:]  # ports reversed
    assert run(obj, reply, "cil_to_container")[0] == TC_ACT_OK
    decoded = [decode(e) for e in events.poll()]
    assert [e.ct_status for e in decoded[-2:]] == ["new", "reply"]
    assert decoded[-2].observation_point == "TO_STACK"


def ipv6_ns(target: str) -> bytes:
    src = ipaddress.IPv6Address("fd00:200:1::2")
    dst = ipaddress.IPv6Address("ff02::1:ff00:1")
    body = struct.pack("!BBHI16s", 135, 0, 0, 0, ipaddress.IPv6Address(target).packed) + b"\x01\x01" + mac(POD_MAC)
    pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(body), 58)
    body = body[:2] + struct.pack("!H", csum(pseudo + body)) + body[4:]
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(body), 58, 255, src.packed, dst.packed)
    return b"\x33\x33\xff\x00\x00\x01" + mac(POD_MAC) + b"\x86\xdd" + ip6 + body


def test_neighbor_solicitation_for_router_gets_advertisement(lxc: tuple[BpfObject, RingEvents]) -> None:
    obj, _ = lxc
    verdict, out = run(obj, ipv6_ns("fd00:200:1::1"))
    assert verdict == TC_ACT_REDIRECT
    ip6, icmp = out[14:54], out[54:86]
    assert icmp[0] == 136 and icmp[8:24] == ipaddress.IPv6Address("fd00:200:1::1").packed
    assert icmp[26:32] == mac(LXC_MAC)  # target link-layer address option
    pseudo = ip6[8:24] + ip6[24:40] + struct.pack("!I3xB", 32, 58)
    assert csum(pseudo + icmp) == 0  # checksum valid


def test_aggregation_medium_reports_new_flows_and_flag_changes_only(pin_dir: Path) -> None:
    config = EndpointConfig(
        endpoint_id=1, identity=256, lxc_ifindex=4, lxc_mac=LXC_MAC, pod_mac=POD_MAC,
        pod_ipv4=ipaddress.IPv4Address(POD), pod_ipv6=None, router_ipv4=ipaddress.IPv4Address("10.200.1.1"),
        router_ipv6=None, aggregation=1, aggregation_interval=3600,
    )
    medium = BpfObject.open(default_bpf_dir() / "bpf_lxc.o", pin_root=pin_dir, rodata={"CONFIG": config.pack()},
                            max_entries={"cilia_ct_tcp_v1": 4096, "cilia_ct_any_v1": 4096})
    try:
        allow_all(medium, 1)
        with RingEvents(medium.map("cilia_events_v1")) as events:
            for flags in (0x02, 0x10, 0x10, 0x18, 0x11):  # SYN, ACK, ACK, PSH+ACK, FIN+ACK
                medium.program("cil_from_container").test_run(ipv4_tcp(POD, WORLD, flags=flags))
            seen = events.poll()
        flags_reported = [decode(e).packet.l4.tcp_flags for e in seen]  # type: ignore[union-attr]
        assert flags_reported == [{"SYN"}, {"ACK", "FIN"}]
        ct = CtMap(medium.map("cilia_ct_tcp_v1"), medium.map("cilia_ct_any_v1"))
        (key, entry), = ct.entries()
        assert entry.tx_packets == 5 and entry.closing and str(key.destination) == WORLD
        assert ct.gc(now=0) == 0  # nothing expired yet
        assert ct.gc(now=entry.expires + 1) == 1 and ct.entries() == []
    finally:
        medium.close()


PROXY_MARK_HAIRPIN = 0xC4000000  # bpf/lib/proxy.h


@pytest.mark.parametrize(("src", "dst", "reason"), [
    (WORLD, POD, "PROXY_UNAVAILABLE"),  # the hairpin taken: no proxy socket here to assign it to
    (POD, PEER, "INVALID_PACKET"),      # the pod's own traffic: never handed to the proxy
    (POD, POD, "INVALID_PACKET"),
    (WORLD, PEER, "INVALID_PACKET"),    # not for this pod
])
def test_the_hairpin_mark_is_taken_only_for_a_packet_to_this_pod_from_another_address(
        lxc: tuple[BpfObject, RingEvents], src: str, dst: str, reason: str) -> None:
    obj, events = lxc
    ctx = struct.pack("=III", 0, 0, PROXY_MARK_HAIRPIN | 1)  # __sk_buff up to its mark
    result = obj.program("cil_from_container").test_run(ipv4_tcp(src, dst), ctx=ctx)
    assert result.retval == TC_ACT_SHOT
    drop = decode(events.poll()[-1])
    assert drop.is_drop and drop.drop_reason_name == reason and drop.src_identity == 1
