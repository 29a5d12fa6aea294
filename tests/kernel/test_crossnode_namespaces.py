"""Two nodes in namespaces (cilia.testing.twonode), each with a pod behind the real bpf_lxc, the
node's bpf_host on its underlay and, in tunnel mode, bpf_overlay on cilia_vxlan; the cluster's part
written by DatapathAdapter.sync_cluster. Real TCP between the pods, IPv4 and IPv6, in both routing
modes; policy on the receiving node sees the sender's real identity (from the ipcache in native
mode, from the VNI in tunnel mode); a VXLAN packet from an address that is no node is dropped."""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cilia.cluster.model import RoutingMode
from cilia.maps import lb as lbm
from cilia.maps.ipcache import FLAG_CLUSTER, FLAG_NATIVE
from cilia.monitor.events import MonitorEvent, decode
from cilia.testing.bpf import RingEvents
from cilia.testing.lbnode import write_service
from cilia.testing.packets import csum
from cilia.testing.twonode import (
    CLIENT,
    CLIENT6,
    ENDPOINT_ID,
    NetnsWorker,
    Node,
    TwoNodes,
    allow_all,
    allow_ingress_from,
)
from cilia.testing.wait import wait_for

PORT, UDP_PORT, VXLAN_PORT = 8080, 9000, 8472
TCP, UDP = 6, 17


@pytest.fixture(scope="module", params=[RoutingMode.NATIVE, RoutingMode.TUNNEL], ids=["native", "tunnel"])
def cluster(request: pytest.FixtureRequest) -> Iterator[TwoNodes]:
    with TwoNodes(request.param) as nodes:
        yield nodes


@pytest.fixture(autouse=True)
def open_policy(cluster: TwoNodes) -> Iterator[None]:
    yield
    for node in cluster.nodes:
        cluster.set_policy(node, allow_all())


def _listen(family: int, address: str, port: int) -> socket.socket:
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, port))
    server.listen(4)
    server.settimeout(10)
    return server


def _accept_echo(server: socket.socket) -> str:
    conn, peer = server.accept()
    with conn:
        conn.settimeout(10)
        conn.sendall(conn.recv(100).upper())
    return str(peer[0])


def _connect(family: int, address: str, port: int, timeout: float) -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect((address, port))
        client.sendall(b"hello across nodes")
        return client.recv(100)


def tcp_exchange(cluster: TwoNodes, version: int, timeout: float = 10.0, client: NetnsWorker | None = None,
                 to: tuple[str, int] | None = None) -> tuple[bytes, str]:
    """`client` (pod A's netns by default) connects to `to` (pod B's server by default), which pod B's
    server answers; (what came back, the client address the server saw)."""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    target = str(cluster.b.pod_ipv4 if version == 4 else cluster.b.pod_ipv6)
    server = cluster.b.pod_worker.run(_listen, family, target, PORT)
    address, port = to or (target, PORT)
    try:
        accepted = cluster.b.pod_worker.submit(_accept_echo, server)
        reply = (client or cluster.a.pod_worker).run(_connect, family, address, port, timeout, timeout=timeout + 5)
        return reply, accepted.result(timeout=10)
    finally:
        server.close()


@pytest.mark.parametrize("version", [4, 6])
def test_tcp_between_pods_on_two_nodes_keeps_the_pod_address(cluster: TwoNodes, version: int) -> None:
    reply, peer = tcp_exchange(cluster, version)
    assert reply == b"HELLO ACROSS NODES"
    expected = cluster.a.pod_ipv4 if version == 4 else cluster.a.pod_ipv6
    assert ipaddress.ip_address(peer) == expected  # not masqueraded, not the node's address


def _conntrack_lines(port: int) -> list[str]:
    """The calling thread's netns' netfilter conntrack entries of TCP port `port` (/proc/thread-self:
    the worker's thread, not the process, is in the node's netns)."""
    text = Path("/proc/thread-self/net/nf_conntrack").read_text()
    return [line for line in text.splitlines() if f"dport={port} " in line]


def native_only(cluster: TwoNodes) -> None:
    if cluster.mode is not RoutingMode.NATIVE:
        pytest.skip("native mode only")


@pytest.mark.parametrize("version", [4, 6])
def test_native_mode_forwards_to_the_other_node_without_the_nodes_stack(cluster: TwoNodes, version: int) -> None:
    """The remote pod is inside the native-routing CIDR: its ipcache entry is flagged native, the
    sending pod's program forwards straight to the underlay (a TO_NETWORK trace), and neither node's
    netfilter tracks the connection (both directions bypass it), while the exchange keeps the pod address."""
    native_only(cluster)
    a, b = cluster.a, cluster.b
    remote = a.adapter.ipcache_entries()[ipaddress.ip_network(b.pod_ipv4 if version == 4 else b.pod_ipv6)]
    assert remote.flags == FLAG_CLUSTER | FLAG_NATIVE
    own_node = a.adapter.ipcache_entries()[ipaddress.ip_network(b.ipv4)]
    assert own_node.flags == FLAG_CLUSTER  # the other node itself: masqueraded as before, via the stack
    with RingEvents(a.adapter.datapath.events_map) as events:
        reply, peer = tcp_exchange(cluster, version)
        decoded = [decode(record) for record in events.poll()]
    assert reply == b"HELLO ACROSS NODES"
    assert ipaddress.ip_address(peer) == (a.pod_ipv4 if version == 4 else a.pod_ipv6)
    to_network = [e for e in decoded if e.observation_point == "TO_NETWORK" and e.dst_identity == b.identity]
    assert to_network and {e.source_file for e in to_network} == {"bpf_lxc.c"}
    assert not [e for e in decoded if e.observation_point == "TO_STACK" and e.dst_identity == b.identity]
    assert a.worker.run(_conntrack_lines, PORT) == []
    assert b.worker.run(_conntrack_lines, PORT) == []


RULE_TABLE, RULE_PRIORITY = 100, 50


def _ip(netns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, timeout=10, check=True).stdout


@pytest.mark.parametrize("version", [4, 6])
def test_native_forwarding_takes_the_main_tables_route_and_leaves_the_rest_to_the_stack(cluster: TwoNodes,
                                                                                         version: int) -> None:
    """The pod's program looks the route up in the main table only (lib/fib.h BPF_FIB_LOOKUP_DIRECT,
    where the agent routes the other nodes' pod CIDRs), without walking the node's policy rules: with
    the other node's pod CIDR routed only by a rule's table, the packet is not forwarded by the
    program but goes up the node's stack (TO_STACK), whose routing follows the rule to the other
    node: still delivered, the pod's address kept."""
    native_only(cluster)
    a, b = cluster.a, cluster.b
    family = "-4" if version == 4 else "-6"
    cidr = str(b.pod_cidr4 if version == 4 else b.pod_cidr6)
    route = json.loads(_ip(a.netns, family, "-j", "route", "show", cidr))[0]
    via = ["via", route["gateway"]] if "gateway" in route else []
    hop = [*via, "dev", route["dev"]]
    _ip(a.netns, family, "route", "del", cidr)
    try:
        _ip(a.netns, family, "route", "add", cidr, *hop, "table", str(RULE_TABLE))
        _ip(a.netns, family, "rule", "add", "to", cidr, "lookup", str(RULE_TABLE), "priority", str(RULE_PRIORITY))
        with RingEvents(a.adapter.datapath.events_map) as events:
            reply, peer = tcp_exchange(cluster, version)
            decoded = [decode(record) for record in events.poll()]
    finally:
        subprocess.run(["ip", "-n", a.netns, family, "rule", "del", "priority", str(RULE_PRIORITY)],
                       capture_output=True, timeout=10, check=False)
        subprocess.run(["ip", "-n", a.netns, family, "route", "del", cidr, "table", str(RULE_TABLE)],
                       capture_output=True, timeout=10, check=False)
        cluster.sync()  # the agent's own route back, exactly as it installs it
    assert reply == b"HELLO ACROSS NODES"
    assert ipaddress.ip_address(peer) == (a.pod_ipv4 if version == 4 else a.pod_ipv6)
    sent = [e for e in decoded if e.source_file == "bpf_lxc.c" and e.dst_identity == b.identity
            and e.observation_point in ("TO_NETWORK", "TO_STACK")]
    assert sent and {e.observation_point for e in sent} == {"TO_STACK"}


def _link(netns: str, ifname: str) -> dict[str, Any]:
    out = subprocess.run(["ip", "-n", netns, "-j", "-s", "link", "show", "dev", ifname], capture_output=True,
                         text=True, timeout=10, check=True).stdout
    link: dict[str, Any] = json.loads(out)[0]
    return link


@pytest.mark.parametrize("version", [4, 6])
def test_the_receiving_node_delivers_into_the_pod_by_the_endpoints_own_program(cluster: TwoNodes,
                                                                               version: int) -> None:
    """bpf_host (native) / bpf_overlay (tunnel) tail-call the endpoint's cil_to_container_peer, which
    redirects into the pod's eth0: the host-side veth transmits nothing, and the endpoint's events
    name its veth as before."""
    b = cluster.b
    assert b.adapter.datapath.ingress_calls.has(ENDPOINT_ID)
    lxc = f"lxc{b.name}"
    before = _link(b.netns, lxc)["stats64"]["tx"]["packets"]
    with RingEvents(b.adapter.datapath.events_map) as events:
        assert tcp_exchange(cluster, version)[0] == b"HELLO ACROSS NODES"
        decoded = [decode(record) for record in events.poll()]
    after = _link(b.netns, lxc)["stats64"]["tx"]["packets"]
    assert after - before <= 1  # one for the node's own neighbour discovery, at most
    delivered = [e for e in decoded if e.observation_point == "TO_ENDPOINT" and e.src_identity == cluster.a.identity]
    assert len(delivered) >= 3  # SYN, data, FIN at least (aggregation is off)
    assert {e.source_file for e in delivered} == {"bpf_lxc.c"}
    assert {e.ifindex for e in delivered} == {_link(b.netns, lxc)["ifindex"]}


def test_sync_cluster_is_idempotent_and_keeps_local_entries(cluster: TwoNodes) -> None:
    assert cluster.sync() == {"a": 0, "b": 0}
    entries = cluster.b.adapter.ipcache_entries()
    own = entries[ipaddress.ip_network(cluster.b.pod_ipv4)]
    assert own.identity == cluster.b.identity and own.flags == 0  # the local pod's entry, untouched
    remote = entries[ipaddress.ip_network(cluster.a.pod_ipv4)]
    assert remote.identity == cluster.a.identity
    assert remote.tunnel_address == (cluster.a.ipv4 if cluster.mode is RoutingMode.TUNNEL else None)
    assert entries[ipaddress.ip_network(cluster.a.ipv4)].identity == 6  # remote-node


def _udp_echo_once(sock: socket.socket) -> None:
    sock.settimeout(10)
    data, peer = sock.recvfrom(2048)
    sock.sendto(data.upper(), peer)


def _udp_ask(family: int, address: str, port: int) -> tuple[bytes, str]:
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.connect((address, port))  # a connected socket takes answers from that address only
        sock.send(b"who answers")
        data = sock.recv(2048)
        return data, str(sock.getpeername()[0])


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("source", ["node-a", "client"])
def test_the_other_node_and_the_world_get_udp_answers_from_the_pod(cluster: TwoNodes, version: int,
                                                                   source: str) -> None:
    """A request delivered by bpf_host/bpf_overlay bypasses netfilter; the pod's answer must still
    leave unmasqueraded (from-container marks replies), or a connected UDP client never sees it."""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    target = str(cluster.b.pod_ipv4 if version == 4 else cluster.b.pod_ipv6)

    def bind() -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((target, UDP_PORT))
        return sock

    server = cluster.b.pod_worker.run(bind)
    try:
        answered = cluster.b.pod_worker.submit(_udp_echo_once, server)
        asker = cluster.a.worker if source == "node-a" else cluster.client
        data, peer = asker.run(_udp_ask, family, target, UDP_PORT, timeout=15)
        answered.result(timeout=10)
    finally:
        server.close()
    assert data == b"WHO ANSWERS" and peer == target


@pytest.mark.parametrize("version", [4, 6])
def test_a_pods_service_connection_to_a_backend_on_the_other_node(cluster: TwoNodes, version: int) -> None:
    """The per-packet path (the pod's process is outside the socket hooks' cgroup): from-container
    DNATs to the backend on node b, node a's to-container reverse-NATs its replies."""
    vip = "10.96.0.10" if version == 4 else "fd00:96::10"
    backend = str(cluster.b.pod_ipv4 if version == 4 else cluster.b.pod_ipv6)
    write_service(cluster.a.adapter.lb, vip, 80, 10 + version, [(10 + version, backend, PORT)])
    reply, peer = tcp_exchange(cluster, version, to=(vip, 80))
    assert reply == b"HELLO ACROSS NODES"
    assert ipaddress.ip_address(peer) == (cluster.a.pod_ipv4 if version == 4 else cluster.a.pod_ipv6)


@pytest.mark.parametrize("version", [4, 6])
def test_nodeport_from_outside_to_a_backend_on_the_other_node(cluster: TwoNodes, version: int) -> None:
    """A client outside the cluster reaches node a's NodePort; the backend is on node b: node a DNATs
    (bpf_host), SNATs to its own address (netfilter) and reverse-translates the replies (bpf_host's
    egress program), so the client talks to the frontend throughout."""
    node_address = str(cluster.a.ipv4 if version == 4 else cluster.a.ipv6)
    backend = str(cluster.b.pod_ipv4 if version == 4 else cluster.b.pod_ipv6)
    write_service(cluster.a.adapter.lb, node_address, 30080, 20 + version, [(20 + version, backend, PORT)],
                  flags=lbm.SVC_F_EXTERNAL)
    reply, peer = tcp_exchange(cluster, version, client=cluster.client, to=(node_address, 30080))
    assert reply == b"HELLO ACROSS NODES"
    assert ipaddress.ip_address(peer) == ipaddress.ip_address(node_address)  # SNAT to node a
    assert (CLIENT if version == 4 else CLIENT6) != peer


def _policy_drops(events: RingEvents, node_identity: int, port: int) -> list[MonitorEvent]:
    """Policy drops into the node's pod of packets to `port` (the node's own IPv6 neighbour
    discovery towards the pod, from ::, is dropped by policy too, and is not what is tested)."""
    decoded = [decode(record) for record in events.poll()]
    return [e for e in decoded if e.is_policy_drop and e.dst_identity == node_identity
            and e.packet is not None and e.packet.l4 is not None and e.packet.l4.destination_port == port]


@pytest.mark.parametrize("version", [4, 6])
def test_ingress_policy_on_the_receiving_node_sees_the_senders_identity(cluster: TwoNodes, version: int) -> None:
    b = cluster.b
    cluster.set_policy(b, allow_ingress_from(cluster.a.identity, TCP, PORT))
    assert tcp_exchange(cluster, version)[0] == b"HELLO ACROSS NODES"
    cluster.set_policy(b, allow_ingress_from(999, TCP, PORT))  # not pod A's identity any more
    with RingEvents(b.adapter.datapath.events_map) as events:
        with pytest.raises((TimeoutError, OSError)):
            tcp_exchange(cluster, version, timeout=1.5)
        drops = wait_for(lambda: _policy_drops(events, b.identity, PORT), timeout=5, message="a policy drop on node b")
    assert {e.src_identity for e in drops} == {cluster.a.identity}
    assert {e.source_file for e in drops} == {"bpf_lxc.c"}  # the to-container program decided


# ----- tunnel mode: what goes on the wire, and who may send into the tunnel --------------------------
def _capture(interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sock.bind((interface, 0))
    sock.setblocking(False)
    return sock


def _vxlan_frames(sock: socket.socket) -> list[tuple[str, str, int, bytes]]:
    """(outer source, outer destination, VNI, inner frame) of every VXLAN packet captured so far."""
    found = []
    for _ in range(10000):
        try:
            frame = sock.recv(65535)
        except BlockingIOError:
            break
        if frame[12:14] != b"\x08\x00" or frame[23] != UDP:
            continue
        ihl = (frame[14] & 0x0F) * 4
        udp = 14 + ihl
        if struct.unpack_from("!H", frame, udp + 2)[0] != VXLAN_PORT:
            continue
        vni = struct.unpack_from("!I", frame, udp + 12)[0] >> 8
        found.append((str(ipaddress.IPv4Address(frame[26:30])), str(ipaddress.IPv4Address(frame[30:34])), vni,
                      frame[udp + 16:]))
    return found


def tunnel_only(cluster: TwoNodes) -> None:
    if cluster.mode is not RoutingMode.TUNNEL:
        pytest.skip("tunnel mode only")


@pytest.mark.parametrize("version", [4, 6])
def test_encapsulation_carries_the_source_identity_in_the_vni(cluster: TwoNodes, version: int) -> None:
    tunnel_only(cluster)
    capture = cluster.b.worker.run(_capture, "eth0")
    try:
        tcp_exchange(cluster, version)
        frames = cluster.b.worker.run(_vxlan_frames, capture)
    finally:
        capture.close()
    from_a = [f for f in frames if f[0] == str(cluster.a.ipv4)]
    assert from_a, f"no VXLAN packet from node a on node b's underlay: {frames}"
    assert {(dst, vni) for _src, dst, vni, _inner in from_a} == {(str(cluster.b.ipv4), cluster.a.identity)}
    ethertype = b"\x08\x00" if version == 4 else b"\x86\xdd"
    assert all(inner[12:14] == ethertype for *_, inner in from_a)


def _udp_conntrack_lines(port: int) -> list[str]:
    text = Path("/proc/thread-self/net/nf_conntrack").read_text()
    return [line for line in text.splitlines() if " udp " in f" {line} " and f"dport={port} " in line]


@pytest.mark.parametrize("version", [4, 6])
def test_the_tunnels_packets_are_not_tracked_by_the_nodes_netfilter(cluster: TwoNodes, version: int) -> None:
    """The VXLAN packets between the nodes bypass netfilter conntrack (a NOTRACK rule for the tunnel
    port on both nodes), where the masquerade rules would otherwise track every one of them."""
    tunnel_only(cluster)
    assert tcp_exchange(cluster, version)[0] == b"HELLO ACROSS NODES"
    assert cluster.a.worker.run(_udp_conntrack_lines, VXLAN_PORT) == []
    assert cluster.b.worker.run(_udp_conntrack_lines, VXLAN_PORT) == []


def vxlan_udp(vni: int, src: str, dst: str, payload: bytes) -> bytes:
    """A VXLAN payload (header + inner Ethernet + IPv4 + UDP) as another node's kernel would send it."""
    udp = struct.pack("!HHHH", 5555, UDP_PORT, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 7, 0, 64, UDP, 0,
                     ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    inner = bytes.fromhex("02aabbccdd01") + bytes.fromhex("02aabbccdd02") + b"\x08\x00" + ip + udp
    return struct.pack("!II", 0x08000000, vni << 8) + inner


def _send_vxlan(source: str, target: str, datagram: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.sendto(datagram, (target, VXLAN_PORT))


def _udp_server(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, UDP_PORT))
    sock.setblocking(False)
    return sock


def _received(sock: socket.socket) -> list[bytes]:
    got = []
    for _ in range(100):
        try:
            got.append(sock.recv(2048))
        except BlockingIOError:
            break
    return got


def _send_and_collect(cluster: TwoNodes, source: str, vni: int, payload: bytes, node: Node) -> list[bytes]:
    server = node.pod_worker.run(_udp_server, str(node.pod_ipv4))
    try:
        datagram = vxlan_udp(vni, str(cluster.a.pod_ipv4), str(node.pod_ipv4), payload)
        cluster.a.worker.run(_send_vxlan, source, str(node.ipv4), datagram)
        try:
            return wait_for(lambda: node.pod_worker.run(_received, server), timeout=2, interval=0.05,
                            message=f"{payload!r} in pod b")
        except AssertionError:
            return []
    finally:
        server.close()


def test_overlay_takes_the_identity_from_a_known_nodes_vni_and_enforces_policy(cluster: TwoNodes) -> None:
    tunnel_only(cluster)
    b = cluster.b
    cluster.set_policy(b, allow_ingress_from(cluster.a.identity, UDP, UDP_PORT))
    with RingEvents(b.adapter.datapath.events_map) as events:
        assert _send_and_collect(cluster, str(cluster.a.ipv4), cluster.a.identity, b"as pod a", b) == [b"as pod a"]
        # the same packet claiming another identity: the policy decides on the VNI's identity
        assert _send_and_collect(cluster, str(cluster.a.ipv4), 777, b"as 777", b) == []
        drops = wait_for(lambda: _policy_drops(events, b.identity, UDP_PORT), timeout=5,
                         message="a policy drop on node b")
    assert {e.src_identity for e in drops} == {777}


def test_overlay_drops_a_packet_from_an_unknown_sender(cluster: TwoNodes) -> None:
    tunnel_only(cluster)
    rogue = "192.0.2.99"  # on node a's underlay, but no node of the cluster
    subprocess.run(["ip", "-n", cluster.a.netns, "addr", "replace", f"{rogue}/24", "dev", "eth0"], check=True,
                   timeout=10)
    b = cluster.b
    with RingEvents(b.adapter.datapath.events_map) as events:
        assert _send_and_collect(cluster, rogue, cluster.a.identity, b"spoofed", b) == []

        def unknown_sender() -> list[MonitorEvent]:
            return [e for e in map(decode, events.poll()) if e.is_drop and e.drop_reason_name == "UNKNOWN_SENDER"]

        drops = wait_for(unknown_sender, timeout=5, message="an UNKNOWN_SENDER drop on node b")
    assert {e.source_file for e in drops} == {"bpf_overlay.c"} and all(e.source_line > 0 for e in drops)
