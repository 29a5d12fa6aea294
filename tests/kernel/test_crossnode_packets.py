"""The cross-node paths through BPF_PROG_RUN: bpf_host delivering a packet from another node's pod
to a local endpoint (native routing) with the ipcache's identity, bpf_lxc encapsulating for a
destination with a tunnel endpoint, bpf_overlay refusing a packet without tunnel metadata, and
bpf_host's handling of the tunnel's outer packets from known nodes (lib/underlay.h): decapsulated and
delivered with the VNI's identity when for a local endpoint, else passed to the VXLAN device.
(What the tunnel key holds on the wire, and the overlay's sender check, need a real VXLAN device:
tests/kernel/test_crossnode_namespaces.py.)"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from cilia.bpf import BpfObject
from cilia.datapath import default_bpf_dir
from cilia.datapath.config import EndpointConfig, HostConfig
from cilia.datapath.manager import TO_CONTAINER_PEER
from cilia.maps import calls
from cilia.maps import lb as lbm
from cilia.maps.calls import IngressCalls
from cilia.maps.ct import CtEntry, CtTuple
from cilia.maps.ipcache import IpcacheMap, IpcacheValue
from cilia.monitor.events import decode
from cilia.testing.bpf import RingEvents
from cilia.testing.lbnode import MAGLEV_M, NODE, Node, endpoint_config, write_service
from cilia.testing.packets import (
    LXC_MAC,
    PEER,
    PEER6,
    PEER_LXC_MAC,
    PEER_MAC,
    POD,
    POD6,
    POD_MAC,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    mac,
    parse,
    tcp_packet,
    vxlan_frame,
)

REMOTE_POD, REMOTE_POD6 = "10.200.2.5", "fd00:200:2::5"
REMOTE_IDENTITY = 300
REMOTE_NODE = ipaddress.IPv4Address("192.0.2.12")
NODE_MACS = ("02:00:00:00:0a:01", "02:00:00:00:0a:02")  # the node's eth0, the other node's
TUNNEL_IFINDEX = 99
TUNNEL_PORT = 8472
UNKNOWN_SENDER = "192.0.2.99"  # on the underlay, but no node of the cluster


@pytest.fixture
def node(pin_dir: Path) -> Iterator[Node]:
    running = Node(pin_dir)
    try:
        ipcache = IpcacheMap(running.client.map("cilia_ipcache_v1"))
        for address in (REMOTE_POD, REMOTE_POD6):
            ipcache.put(ipaddress.ip_network(address), IpcacheValue.remote(REMOTE_IDENTITY, REMOTE_NODE))
        yield running
    finally:
        running.close()


@pytest.mark.parametrize(("source", "local"), [(REMOTE_POD, PEER), (REMOTE_POD6, PEER6)])
def test_bpf_host_delivers_to_a_local_endpoint_with_the_ipcache_identity(node: Node, source: str,
                                                                         local: str) -> None:
    packet = tcp_packet(source, local, 40000, 8080, eth=NODE_MACS)
    result = node.host.program("cil_from_netdev").test_run(packet)
    assert result.retval == TC_ACT_REDIRECT  # to the endpoint's host-side veth, not the stack
    out = result.data_out
    assert out[0:6] == mac(PEER_MAC) and out[6:12] == mac(PEER_LXC_MAC)
    hop = out[14 + 8] if "." in local else out[14 + 7]
    assert hop == 63
    parsed = parse(out)
    assert parsed.ip_ok and parsed.tcp_ok and str(parsed.src) == source
    # the endpoint's to-container program (which the redirect reaches) sees the remote identity
    with RingEvents(node.backend.map("cilia_events_v1")) as events:
        assert node.backend.program("cil_to_container").test_run(out).retval == 0
        trace = decode(events.poll()[-1])
    assert trace.observation_point == "TO_ENDPOINT" and trace.src_identity == REMOTE_IDENTITY


def test_bpf_host_leaves_other_traffic_to_the_stack(node: Node) -> None:
    packet = tcp_packet(REMOTE_POD, "192.0.2.11", 40000, 22, eth=NODE_MACS)  # for the node itself
    result = node.host.program("cil_from_netdev").test_run(packet)
    assert result.retval == 0 and result.data_out == packet


@pytest.fixture
def tunnelled(node: Node, pin_dir: Path) -> Iterator[BpfObject]:
    """The client endpoint's program as in tunnel mode: it knows cilia_vxlan's ifindex."""
    base = endpoint_config(1, POD, POD6, POD_MAC, LXC_MAC)
    config = EndpointConfig(**{**base.__dict__, "tunnel_ifindex": TUNNEL_IFINDEX})
    obj = BpfObject.open(default_bpf_dir() / "bpf_lxc.o", pin_root=pin_dir, rodata={"CONFIG": config.pack()},
                         max_entries={"cilia_ct_tcp_v1": 4096, "cilia_ct_any_v1": 4096},
                         value_sizes={"cilia_lb_maglev_v1": 4 * 251})
    try:
        yield obj
    finally:
        obj.close()


@pytest.mark.parametrize(("client", "remote"), [(POD, REMOTE_POD), (POD6, REMOTE_POD6)])
def test_from_container_encapsulates_for_a_tunnel_endpoint(node: Node, tunnelled: BpfObject, client: str,
                                                           remote: str) -> None:
    with RingEvents(tunnelled.map("cilia_events_v1")) as events:
        result = tunnelled.program("cil_from_container").test_run(tcp_packet(client, remote, 40000, 8080))
        trace = decode(events.poll()[-1])
    assert result.retval == TC_ACT_REDIRECT  # to cilia_vxlan, with the tunnel key set
    assert trace.observation_point == "TO_OVERLAY"
    assert (trace.src_identity, trace.dst_identity) == (256, REMOTE_IDENTITY)


def test_native_mode_sends_a_remote_pods_packet_up_the_stack(node: Node) -> None:
    """The same destination, from a program without a tunnel device: the node's routes take it."""
    with RingEvents(node.client.map("cilia_events_v1")) as events:
        result = node.client.program("cil_from_container").test_run(tcp_packet(POD, REMOTE_POD, 40000, 8080))
        trace = decode(events.poll()[-1])
    assert result.retval == 0 and trace.observation_point == "TO_STACK" and trace.dst_identity == REMOTE_IDENTITY


def test_overlay_drops_a_packet_without_tunnel_metadata(pin_dir: Path) -> None:
    obj = BpfObject.open(default_bpf_dir() / "bpf_overlay.o", pin_root=pin_dir,
                         rodata={"CONFIG": EndpointConfig.node(0, 5).pack()},
                         max_entries={"cilia_ct_tcp_v1": 4096, "cilia_ct_any_v1": 4096})
    try:
        with RingEvents(obj.map("cilia_events_v1")) as events:
            result = obj.program("cil_from_overlay").test_run(tcp_packet(REMOTE_POD, PEER, 40000, 8080))
            drop = decode(events.poll()[-1])
    finally:
        obj.close()
    assert result.retval == TC_ACT_SHOT
    assert drop.drop_reason_name == "NO_TUNNEL_KEY" and drop.source_file == "bpf_overlay.c"


@pytest.fixture
def tunnel_host(node: Node, pin_dir: Path) -> Iterator[BpfObject]:
    """bpf_host as the agent loads it in tunnel mode (HOST.tunnel_port), the other node in the ipcache,
    and a UDP frontend on this node's address at the tunnel port: the full path would translate a
    packet to it, so an untouched packet shows the fast pass took it."""
    ipcache = IpcacheMap(node.client.map("cilia_ipcache_v1"))
    ipcache.put(ipaddress.ip_network(REMOTE_NODE), IpcacheValue.remote(6, None))  # remote-node
    ipcache.put(ipaddress.ip_network(NODE), IpcacheValue.remote(1, None))  # this node's own address: host
    write_service(node.lb, NODE, TUNNEL_PORT, 9, [(91, PEER, 9000)], flags=lbm.SVC_F_EXTERNAL, protocol=17)
    obj = BpfObject.open(default_bpf_dir() / "bpf_host.o", pin_root=pin_dir,
                         max_entries={"cilia_ct_tcp_v1": 4096, "cilia_ct_any_v1": 4096,
                                      **dict.fromkeys(lbm.SIZED_BY_MAP_MAX, lbm.MAP_MAX)},
                         value_sizes={lbm.MAGLEV_NAME: 4 * MAGLEV_M},
                         rodata={"CONFIG": EndpointConfig.node(0, 5).pack(),
                                 "HOST": HostConfig(MAGLEV_M, tunnel_port=TUNNEL_PORT).pack()})
    try:
        yield obj
    finally:
        obj.close()


INNER_MACS = ("02:00:00:00:0b:01", "02:00:00:00:0b:02")  # the sending node's gateway MAC, its pod's
VNI = 301  # the source pod's identity the sender put in the VNI (the ipcache says 300 for its address)


def _outer(source: str, port: int = TUNNEL_PORT, inner_dst: str = PEER, vni: int = VNI, outer_dst: str = NODE,
           inner_src: str = REMOTE_POD) -> bytes:
    inner = tcp_packet(inner_src, inner_dst, 40000, 8080, eth=INNER_MACS)
    return vxlan_frame(source, outer_dst, port, vni, inner, eth=NODE_MACS)


def _untouched(packet: bytes, tunnel_host: BpfObject) -> None:
    """The packet passes unchanged (for the node's VXLAN device), no event, nothing dropped."""
    with RingEvents(tunnel_host.map("cilia_events_v1")) as events:
        result = tunnel_host.program("cil_from_netdev").test_run(packet)
        assert events.poll() == []
    assert result.retval == 0 and result.data_out == packet


def test_bpf_host_passes_a_known_nodes_tunnel_packet_for_the_node_itself(tunnel_host: BpfObject) -> None:
    _untouched(_outer(str(REMOTE_NODE), inner_dst=NODE), tunnel_host)


@pytest.mark.parametrize(("source", "local"), [(REMOTE_POD, PEER), (REMOTE_POD6, PEER6)])
def test_bpf_host_decapsulates_a_known_nodes_packet_for_a_local_endpoint(node: Node, tunnel_host: BpfObject,
                                                                         source: str, local: str) -> None:
    """Decapsulated in BPF and tail-called into the endpoint's own ingress program, which sees the
    VNI's identity (not the ipcache's for the inner source) in the mark the delivery set."""
    IngressCalls(node.host.map(calls.NAME)).set(2, node.backend.program(TO_CONTAINER_PEER).fd)
    inner = tcp_packet(source, local, 40000, 8080, eth=INNER_MACS)
    packet = vxlan_frame(str(REMOTE_NODE), NODE, TUNNEL_PORT, VNI, inner, eth=NODE_MACS)
    with RingEvents(tunnel_host.map("cilia_events_v1")) as events:
        result = tunnel_host.program("cil_from_netdev").test_run(packet)
        traces = [decode(raw) for raw in events.poll()]
    assert result.retval == TC_ACT_REDIRECT  # redirect_peer into the pod, by the endpoint's program
    out = result.data_out
    assert len(out) == len(inner)  # outer IPv4 + UDP + VXLAN + inner Ethernet gone
    assert out[0:6] == mac(PEER_MAC) and out[6:12] == mac(PEER_LXC_MAC)
    assert out[12:14] == inner[12:14]  # the inner packet's EtherType (IPv6: fixed from the outer's)
    hop = out[14 + 8] if "." in local else out[14 + 7]
    assert hop == 63
    parsed = parse(out)
    assert parsed.ip_ok and parsed.tcp_ok and str(parsed.src) == source and str(parsed.dst) == local
    assert [(t.observation_point, t.src_identity, t.dst_identity) for t in traces] == [("TO_ENDPOINT", VNI, 257)]


@pytest.mark.parametrize("case", ["bad vni", "vxlan flags", "reserved bits", "no endpoint", "not this node",
                                  "ip checksum", "trailing bytes", "not vxlan inside"])
def test_bpf_host_leaves_other_tunnel_packets_to_the_device(tunnel_host: BpfObject, case: str) -> None:
    """A known node's packet to the tunnel port that the kernel's VXLAN receive would judge (drop, or
    hand to the node): passed untouched to cilia_vxlan, where bpf_overlay checks it as before."""
    packet = _outer(str(REMOTE_NODE), vni=0 if case == "bad vni" else VNI,
                    inner_dst="10.200.1.77" if case == "no endpoint" else PEER,
                    outer_dst="192.0.2.13" if case == "not this node" else NODE)
    if case == "vxlan flags":
        packet = packet[:42] + b"\x0c" + packet[43:]  # a flag besides I (e.g. GPE's next-protocol bit)
    elif case == "reserved bits":
        packet = packet[:49] + b"\x01" + packet[50:]
    elif case == "ip checksum":
        packet = packet[:24] + bytes([packet[24] ^ 0xFF]) + packet[25:]
    elif case == "trailing bytes":
        packet = packet + bytes(8)  # more than the IP header says: the kernel would trim it first
    elif case == "not vxlan inside":
        packet = packet[:62] + b"\x08\x06" + packet[64:]  # inner ARP
    _untouched(packet, tunnel_host)


@pytest.mark.parametrize("case", ["unknown sender", "other port", "no tunnel"])
def test_bpf_host_gives_other_udp_to_the_tunnel_port_the_full_path(node: Node, tunnel_host: BpfObject,
                                                                    case: str) -> None:
    """An unknown sender's packet to the tunnel port, a known node's to another port (a frontend there
    too), and a known node's to the port when bpf_host runs without a tunnel: translated as before."""
    if case == "other port":
        write_service(node.lb, NODE, 4789, 10, [(92, PEER, 9000)], flags=lbm.SVC_F_EXTERNAL, protocol=17)
    source = UNKNOWN_SENDER if case == "unknown sender" else str(REMOTE_NODE)
    packet = _outer(source, 4789 if case == "other port" else TUNNEL_PORT)
    program = (node.host if case == "no tunnel" else tunnel_host).program("cil_from_netdev")
    result = program.test_run(packet)
    assert result.retval == 7  # TC_ACT_REDIRECT: a local backend gets it as any local endpoint (lib/deliver.h)
    out = result.data_out
    assert ipaddress.IPv4Address(out[14 + 16:14 + 20]) == ipaddress.IPv4Address(PEER)  # DNATed to the backend
    assert int.from_bytes(out[14 + 22:14 + 24], "big") == 9000


# ----- the L7 proxy's upstream leg to another node's pod (lib/proxy_upstream.h) ---------------------
PROXY_MARK_FROM = 0xC2000000
LB_CONN_F_PROXY_UPSTREAM = 1 << 1
CT_LB_FLAGS = 53  # offset of lb_flags in struct ct_entry (cilia.maps.ct)


def _with_mark(mark: int) -> bytes:
    """A __sk_buff for BPF_PROG_RUN up to its mark (len and pkt_type must be 0)."""
    return struct.pack("=III", 0, 0, mark)


def _upstream_entries(node: Node) -> list[tuple[CtTuple, int, int]]:
    """TCP conntrack entries: (tuple, source identity, lb_flags)."""
    return [(CtTuple.unpack(k), CtEntry.unpack(v).src_identity, v[CT_LB_FLAGS])
            for k, v in node.client.map("cilia_ct_tcp_v1").items()]


@pytest.fixture
def overlay(node: Node, pin_dir: Path) -> Iterator[BpfObject]:
    obj = BpfObject.open(default_bpf_dir() / "bpf_overlay.o", pin_root=pin_dir,
                         rodata={"CONFIG": EndpointConfig.node(0, 5).pack()},
                         max_entries={"cilia_ct_tcp_v1": 4096, "cilia_ct_any_v1": 4096})
    try:
        yield obj
    finally:
        obj.close()


@pytest.mark.parametrize(("client", "remote"), [(POD, REMOTE_POD), (POD6, REMOTE_POD6)])
@pytest.mark.parametrize("device", ["netdev", "overlay"])
def test_the_proxys_upstream_leg_is_recorded_at_the_device_it_leaves_by(node: Node, overlay: BpfObject, client: str,
                                                                        remote: str, device: str) -> None:
    program = node.host.program("cil_to_netdev") if device == "netdev" else overlay.program("cil_to_overlay")
    syn = tcp_packet(client, remote, 41000, 80, eth=NODE_MACS)
    # the node's own traffic, a pod's: nothing recorded, the packet untouched
    plain = program.test_run(syn)
    assert plain.retval == 0 and plain.data_out == syn and _upstream_entries(node) == []
    marked = program.test_run(syn, ctx=_with_mark(PROXY_MARK_FROM | REMOTE_IDENTITY + 1))
    assert marked.retval == 0 and marked.data_out == syn
    [(tup, identity, flags)] = _upstream_entries(node)
    assert (str(tup.source), tup.source_port, str(tup.destination), tup.destination_port) == (client, 41000, remote, 80)
    assert identity == REMOTE_IDENTITY + 1 and flags & LB_CONN_F_PROXY_UPSTREAM


def test_an_upstream_leg_on_a_pods_own_tuple_flags_its_entry(node: Node) -> None:
    syn = tcp_packet(POD, REMOTE_POD, 41001, 80)
    assert node.client.program("cil_from_container").test_run(syn).retval == 0  # the pod's own connection
    [(_, _, before)] = _upstream_entries(node)
    assert not before & LB_CONN_F_PROXY_UPSTREAM
    node.host.program("cil_to_netdev").test_run(tcp_packet(POD, REMOTE_POD, 41001, 80, eth=NODE_MACS),
                                                ctx=_with_mark(PROXY_MARK_FROM | 300))
    [(_, _, after)] = _upstream_entries(node)
    assert after & LB_CONN_F_PROXY_UPSTREAM


def test_a_local_upstream_leg_on_the_clients_own_tuple_flags_its_entry(node: Node) -> None:
    # the client pod's own connection to a pod on this node, then the proxy's upstream leg on the
    # same tuple (its port choice does not see the pod's) reaching the server pod's veth
    syn = tcp_packet(POD, PEER, 41002, 80)
    node.client.program("cil_from_container").test_run(syn)
    [(_, _, before)] = _upstream_entries(node)
    assert not before & LB_CONN_F_PROXY_UPSTREAM
    upstream = node.backend.program("cil_to_container").test_run(syn, ctx=_with_mark(PROXY_MARK_FROM | 256))
    assert upstream.retval != TC_ACT_SHOT
    [(_, _, after)] = _upstream_entries(node)
    assert after & LB_CONN_F_PROXY_UPSTREAM
