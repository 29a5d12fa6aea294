"""The per-packet service path through BPF_PROG_RUN: real packets through bpf_lxc.o and bpf_host.o,
the rewrites (DNAT, reverse NAT, reset for a frontend without backends) checked byte for byte,
checksums included."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from cilia.bpf import BpfObject
from cilia.lb.maglev import MaglevBackend, build_table
from cilia.maps import lb as lbm
from cilia.maps.ct import CtMap
from cilia.testing.lbnode import CLIENT, EMPTY_VIP, MAGLEV_M, NODE, VIP, VIP6, Node
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
    csum,
    mac,
    parse,
    pseudo_header,
    tcp_packet,
)


@pytest.fixture
def node(pin_dir: Path) -> Iterator[Node]:
    running = Node(pin_dir)
    try:
        running.service(VIP, 80, 1, [(1, PEER, 8080)])
        running.service(VIP6, 80, 2, [(2, PEER6, 8080)])
        running.service(EMPTY_VIP, 80, 3, [])
        yield running
    finally:
        running.close()


def run(obj: BpfObject, packet: bytes, program: str = "cil_from_container") -> tuple[int, bytes]:
    result = obj.program(program).test_run(packet)
    return result.retval, result.data_out


@pytest.mark.parametrize(("client", "backend", "vip", "rev_nat_id"), [(POD, PEER, VIP, 1), (POD6, PEER6, VIP6, 2)])
def test_dnat_to_backend_then_reverse_nat_of_its_reply(node: Node, client: str, backend: str, vip: str,
                                                       rev_nat_id: int) -> None:
    verdict, out = run(node.client, tcp_packet(client, vip, 40000, 80))
    assert verdict == TC_ACT_REDIRECT  # the backend is a local pod: straight into it
    sent = parse(out)
    assert (str(sent.src), sent.sport, str(sent.dst), sent.dport) == (client, 40000, backend, 8080)
    assert sent.ip_ok and sent.tcp_ok, "checksums after DNAT"
    ct = CtMap(node.client.map("cilia_ct_tcp_v1"), node.client.map("cilia_ct_any_v1"))
    (key, entry), = ct.entries()
    assert (str(key.destination), key.destination_port, entry.rev_nat_id) == (backend, 8080, rev_nat_id)
    # the backend answers from its own address; its program makes the frontend the source again
    verdict, out = run(node.backend, tcp_packet(backend, client, 8080, 40000, flags=0x12,
                                                eth=(PEER_LXC_MAC, PEER_MAC)))
    assert verdict == TC_ACT_REDIRECT
    reply = parse(out)
    assert (str(reply.src), reply.sport, str(reply.dst), reply.dport) == (vip, 80, client, 40000)
    assert reply.ip_ok and reply.tcp_ok, "checksums after reverse NAT"
    # the rest of the connection keeps the same backend
    verdict, out = run(node.client, tcp_packet(client, vip, 40000, 80, flags=0x10))
    assert verdict == TC_ACT_REDIRECT and str(parse(out).dst) == backend


def test_frontend_without_backends_answers_a_syn_with_a_reset(node: Node) -> None:
    verdict, out = run(node.client, tcp_packet(POD, EMPTY_VIP, 40001, 80, seq=5000))
    assert verdict == TC_ACT_REDIRECT  # straight back into the pod that sent it
    rst = parse(out)
    assert (str(rst.src), rst.sport, str(rst.dst), rst.dport) == (EMPTY_VIP, 80, POD, 40001)
    assert rst.flags == 0x14 and rst.ack == 5001 and rst.seq == 0  # RST+ACK acknowledging the SYN
    assert out[0:6] == mac(POD_MAC) and out[6:12] == mac(LXC_MAC)
    assert rst.ip_ok and rst.tcp_ok
    # a non-SYN packet to it is just dropped
    assert run(node.client, tcp_packet(POD, EMPTY_VIP, 40001, 80, flags=0x10))[0] == TC_ACT_SHOT


def test_terminating_backend_keeps_its_connection_but_gets_no_new_one(node: Node) -> None:
    node.service(VIP, 80, 1, [(1, PEER, 8080), (4, "10.200.1.4", 8080)])
    chosen = {str(parse(run(node.client, tcp_packet(POD, VIP, 41000 + i, 80))[1]).dst) for i in range(40)}
    assert chosen == {PEER, "10.200.1.4"}
    # PEER terminating: out of the slots, still in the backends map
    node.lb.apply({lbm.BACKENDS_NAME: {lbm.pack_id(1): lbm.BackendValue(ipaddress.ip_address(PEER), 8080, 6,
                                                                         1).pack()},
                   lbm.SERVICES_NAME: {lbm.ServiceKey(ipaddress.ip_address(VIP), 80, 6, 1).pack():
                                       lbm.ServiceValue(backend_id=4).pack(),
                                       lbm.ServiceKey(ipaddress.ip_address(VIP), 80, 6).pack():
                                       lbm.ServiceValue(count=1, rev_nat_id=1).pack()}},
                  {lbm.SERVICES_NAME: [lbm.ServiceKey(ipaddress.ip_address(VIP), 80, 6, 2).pack()]})
    fresh = {str(parse(run(node.client, tcp_packet(POD, VIP, 42000 + i, 80))[1]).dst) for i in range(20)}
    assert fresh == {"10.200.1.4"}
    kept = [i for i in range(40) if str(parse(run(node.client, tcp_packet(POD, VIP, 41000 + i, 80,
                                                                           flags=0x10))[1]).dst) == PEER]
    assert kept, "established connections to the terminating backend keep it"


def test_node_device_program_selects_by_maglev(node: Node) -> None:
    backends = [(10, PEER, 8080), (11, "10.200.1.4", 8080), (12, "10.200.1.5", 8080)]
    node.service(NODE, 30080, 5, backends, flags=lbm.SVC_F_EXTERNAL | lbm.SVC_F_MAGLEV)
    table = build_table([MaglevBackend(i, f"{ip}:{p}") for i, ip, p in backends], MAGLEV_M)
    node.lb.apply({lbm.MAGLEV_NAME: {lbm.pack_id(5): lbm.pack_maglev(table, MAGLEV_M)}}, {})
    conn = node.client.map(lbm.CONN_NAME)
    chosen: dict[int, str] = {}
    for sport in range(50000, 50060):
        packet = tcp_packet(CLIENT, NODE, sport, 30080, eth=("02:00:00:00:00:aa", "02:00:00:00:00:bb"))
        verdict, out = run(node.host, packet, "cil_from_netdev")
        sent = parse(out)
        # a local backend gets it as any local endpoint (lib/deliver.h); the others up the stack
        assert verdict == (TC_ACT_REDIRECT if str(sent.dst) == PEER else TC_ACT_OK)
        assert sent.dport == 8080 and sent.ip_ok and sent.tcp_ok
        chosen[sport] = str(sent.dst)
        for key in list(conn.keys()):  # forget the connection: the choice must come from the table again
            conn.delete(key)
        assert str(parse(run(node.host, packet, "cil_from_netdev")[1]).dst) == chosen[sport]
    assert set(chosen.values()) == {PEER, "10.200.1.4", "10.200.1.5"}
    # A ClusterIP is not reachable from outside: the device program leaves it alone
    verdict, out = run(node.host, tcp_packet(CLIENT, VIP, 50000, 80), "cil_from_netdev")
    assert verdict == TC_ACT_OK and str(parse(out).dst) == VIP


def test_ipv6_extension_headers_are_walked_to_the_transport_header(node: Node) -> None:
    """Hop-by-hop and destination options in front of TCP: conntrack sees the TCP flow (and the
    service DNAT finds its ports), not an unknown protocol."""
    plain = tcp_packet(POD6, VIP6, 40100, 80)
    ip6, tcp = plain[14:54], plain[54:]
    hop_by_hop = bytes([60, 0]) + b"\x01\x04\0\0\0\0"  # next: dest options; PadN
    dest_opts = bytes([6, 0]) + b"\x01\x04\0\0\0\0"  # next: TCP
    header = bytearray(ip6)
    header[4:6] = struct.pack("!H", len(tcp) + 16)
    header[6] = 0  # next header: hop-by-hop
    packet = plain[:14] + bytes(header) + hop_by_hop + dest_opts + tcp
    verdict, out = run(node.client, packet)
    assert verdict == TC_ACT_REDIRECT
    l4 = out[54 + 16:]
    sport, dport = struct.unpack_from("!HH", l4)
    dst = ipaddress.IPv6Address(out[14 + 24:14 + 40])
    assert (str(dst), sport, dport) == (PEER6, 40100, 8080)
    assert csum(pseudo_header(ipaddress.IPv6Address(POD6), dst, len(l4)) + l4) == 0
    ct = CtMap(node.client.map("cilia_ct_tcp_v1"), node.client.map("cilia_ct_any_v1"))
    assert [(k.protocol, k.destination_port) for k, _ in ct.entries()] == [(6, 8080)]


def test_reused_tuple_after_a_reset_is_a_new_connection(node: Node) -> None:
    """Clients that reset and reuse ports fast: a service connection's tuple reused by a direct
    connection (and the reverse) must not inherit the old connection's reverse NAT."""
    # 1. through the service, then reset by the client
    assert str(parse(run(node.client, tcp_packet(POD, VIP, 40200, 80))[1]).dst) == PEER
    run(node.client, tcp_packet(POD, VIP, 40200, 80, flags=0x04))  # RST
    # 2. the same client port straight to the backend: the backend's answer keeps its own address
    verdict, out = run(node.client, tcp_packet(POD, PEER, 40200, 8080))
    assert verdict == TC_ACT_REDIRECT and (str(parse(out).dst), parse(out).dport) == (PEER, 8080)
    reply = parse(run(node.backend, tcp_packet(PEER, POD, 8080, 40200, flags=0x12,
                                               eth=(PEER_LXC_MAC, PEER_MAC)))[1])
    assert (str(reply.src), reply.sport) == (PEER, 8080), "a direct connection's reply got the service's NAT"
    run(node.client, tcp_packet(POD, PEER, 40200, 8080, flags=0x04))  # RST
    # 3. and back through the service: its reply is the frontend's again
    run(node.client, tcp_packet(POD, VIP, 40200, 80))
    reply = parse(run(node.backend, tcp_packet(PEER, POD, 8080, 40200, flags=0x12,
                                               eth=(PEER_LXC_MAC, PEER_MAC)))[1])
    assert (str(reply.src), reply.sport) == (VIP, 80)
    # 4. the same, with no reset in between (the old connection just went quiet)
    run(node.client, tcp_packet(POD, PEER, 40200, 8080))
    reply = parse(run(node.backend, tcp_packet(PEER, POD, 8080, 40200, flags=0x12,
                                               eth=(PEER_LXC_MAC, PEER_MAC)))[1])
    assert (str(reply.src), reply.sport) == (PEER, 8080)
