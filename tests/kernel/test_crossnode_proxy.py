"""The L7 proxy's datapath across two nodes in namespaces (cilia.testing.twonode), both routing
modes, IPv4 and IPv6, with a stand-in for cilia-proxy: its policy route and IP_TRANSPARENT listener
(cilia.proxy.transparent) in a node's netns.

- Ingress: pod B's ingress entry for pod A says REDIRECT; A's connection arrives at node B through
  bpf_host (native) or bpf_overlay (tunnel), whose tail call into B's endpoint program assigns it to
  node B's listener (the accepted socket is between A's address and B's), and the answers the
  listener's socket sends reach pod A.
- Upstream: a socket in node A's netns bound to pod A's address with SO_MARK = PROXY_MARK_FROM | A's
  identity (the proxy's upstream leg) reaches pod B, whose ingress policy admits only A's identity
  (tunnel: the VNI carries it; native: B's ipcache by the source address), B's server sees pod A's
  address, and B's answers come back to that socket, not into pod A."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from cilia.cluster.model import RoutingMode
from cilia.identity.reserved import ReservedIdentity
from cilia.netlink import NodeNetConfig
from cilia.policy.mapstate import REDIRECT, DirectionState, MapState, PortKey, PortValue
from cilia.proxy import transparent
from cilia.testing.twonode import Node, TwoNodes, allow_all, allow_ingress_from

PORT, TCP = 8080, 6
PROXY_MARK_HAIRPIN = 0xC4000000  # bpf/lib/proxy.h


@pytest.fixture(scope="module", params=[RoutingMode.NATIVE, RoutingMode.TUNNEL], ids=["native", "tunnel"])
def cluster(request: pytest.FixtureRequest) -> Iterator[TwoNodes]:
    with TwoNodes(request.param) as nodes:
        for node in nodes.nodes:
            node.worker.run(transparent.setup_routing)
        yield nodes


@pytest.fixture(autouse=True)
def open_policy(cluster: TwoNodes) -> Iterator[None]:
    yield
    for node in cluster.nodes:
        cluster.set_policy(node, allow_all())


def redirect_ingress_from(identity: int) -> MapState:
    """Ingress enforced: `identity` on TCP PORT through the L7 proxy, nothing else."""
    ingress = DirectionState(lookup=True, enforced=True, classes={identity: 1},
                             ports={(1, PortKey(TCP, PORT, 16)): PortValue(REDIRECT, 4243)})
    return MapState(ingress, DirectionState())


def family_of(version: int) -> socket.AddressFamily:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _listen(family: int, address: str) -> socket.socket:
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, PORT))
    server.listen(4)
    server.settimeout(10)
    return server


def _ask(family: int, address: str, port: int, word: bytes) -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect((address, port))
        client.sendall(word)
        return client.recv(100)


def _serve_once(server: socket.socket) -> tuple[str, str]:
    """Accept one connection, answer its first message upper-cased; (local address, peer address)."""
    conn, peer = server.accept()
    with conn:
        conn.settimeout(10)
        conn.sendall(conn.recv(100).upper())
        return str(conn.getsockname()[0]), str(peer[0])


@pytest.mark.parametrize("version", [4, 6])
def test_a_remote_pods_connection_is_assigned_to_the_nodes_proxy(cluster: TwoNodes, version: int) -> None:
    a, b = cluster.a, cluster.b
    family = family_of(version)
    server_ip = str(b.pod_ipv4 if version == 4 else b.pod_ipv6)
    client_ip = str(a.pod_ipv4 if version == 4 else a.pod_ipv6)
    cluster.set_policy(b, redirect_ingress_from(a.identity))
    proxy = b.worker.run(transparent.listener, transparent.PROXY_PORT, family)
    pod_server = b.pod_worker.run(_listen, family, server_ip)
    try:
        proxy.settimeout(10)
        accepted = b.worker.submit(_serve_once, proxy)
        reply = a.pod_worker.run(_ask, family, server_ip, PORT, b"judge me", timeout=15)
        assert reply == b"JUDGE ME"
        # the proxy's socket stands in for the server: B's address to A's, as the client sent it
        assert accepted.result(timeout=10) == (server_ip, client_ip)
        # and the pod's own server saw nothing of it
        pod_server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            pod_server.accept()
    finally:
        proxy.close()
        pod_server.close()


def test_without_a_listener_the_redirected_connection_is_dropped(cluster: TwoNodes) -> None:
    a, b = cluster.a, cluster.b
    cluster.set_policy(b, redirect_ingress_from(a.identity))
    pod_server = b.pod_worker.run(_listen, socket.AF_INET, str(b.pod_ipv4))
    try:
        with pytest.raises(OSError):
            a.pod_worker.run(_ask, socket.AF_INET, str(b.pod_ipv4), PORT, b"x", timeout=15)
    finally:
        pod_server.close()


def _upstream(family: int, source: str, target: str, identity: int, word: bytes) -> bytes:
    """The proxy's upstream leg: from `source` (a pod's address) with the client's identity in the mark."""
    with socket.socket(family, socket.SOCK_STREAM) as up:
        up.setsockopt(socket.SOL_IP if family == socket.AF_INET else socket.IPPROTO_IPV6,
                      transparent.IP_TRANSPARENT if family == socket.AF_INET else transparent.IPV6_TRANSPARENT, 1)
        up.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, struct.pack("=I", transparent.upstream_mark(identity)))
        up.bind((source, 0))
        up.settimeout(5)
        up.connect((target, PORT))
        up.sendall(word)
        return up.recv(100)


@pytest.mark.parametrize("version", [4, 6])
def test_the_proxys_upstream_leg_keeps_the_pods_address_and_identity(cluster: TwoNodes, version: int) -> None:
    a, b = cluster.a, cluster.b
    family = family_of(version)
    server_ip = str(b.pod_ipv4 if version == 4 else b.pod_ipv6)
    client_ip = str(a.pod_ipv4 if version == 4 else a.pod_ipv6)
    cluster.set_policy(b, allow_ingress_from(a.identity, TCP, PORT))  # pod A's identity only
    pod_server = b.pod_worker.run(_listen, family, server_ip)
    try:
        accepted = b.pod_worker.submit(_serve_once, pod_server)
        reply = a.worker.run(_upstream, family, client_ip, server_ip, a.identity, b"upstream", timeout=15)
        assert reply == b"UPSTREAM"  # B's answer came back to node A's socket, not into pod A
        assert accepted.result(timeout=10) == (server_ip, client_ip)
    finally:
        pod_server.close()


def test_an_upstream_leg_with_another_identity_is_judged_by_it(cluster: TwoNodes) -> None:
    a, b = cluster.a, cluster.b
    cluster.set_policy(b, allow_ingress_from(a.identity, TCP, PORT))
    pod_server = b.pod_worker.run(_listen, socket.AF_INET, str(b.pod_ipv4))
    try:
        if cluster.mode is RoutingMode.TUNNEL:
            # the VNI carries the mark's identity, whatever the source address
            with pytest.raises(OSError):
                a.worker.run(_upstream, socket.AF_INET, str(a.pod_ipv4), str(b.pod_ipv4), a.identity + 7, b"x",
                             timeout=15)
        else:
            pytest.skip("native routing: the receiving node takes the identity from its ipcache by address")
    finally:
        pod_server.close()


# ----- the node's own connection to its pod: hairpinned from the veth's egress to its ingress -------
def _host_entries(node: Node) -> None:
    """The node's own addresses are `host` in its ipcache, as the agent writes them."""
    config = NodeNetConfig(node.pod_cidr4[1], node.pod_cidr6[1], node.pod_cidr4, node.pod_cidr6, "eth0")
    node.worker.run(node.adapter.sync_node_entries, config)


def _ask_from_node(family: int, address: str, port: int, word: bytes) -> tuple[bytes, str]:
    """_ask, and the address the node's stack chose as the source."""
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect((address, port))
        client.sendall(word)
        return client.recv(100), str(client.getsockname()[0])


@pytest.mark.parametrize("version", [4, 6])
def test_the_nodes_own_connection_is_hairpinned_to_its_proxy(cluster: TwoNodes, version: int) -> None:
    """Pod B's ingress entry for the host says REDIRECT: node B's own connection meets B's
    cil_to_container at the veth's egress, is redirected to the veth's ingress and assigned there to
    node B's listener (without the hairpin: dropped as PROXY_UNAVAILABLE)."""
    b = cluster.b
    family = family_of(version)
    server_ip = str(b.pod_ipv4 if version == 4 else b.pod_ipv6)
    _host_entries(b)
    cluster.set_policy(b, redirect_ingress_from(int(ReservedIdentity.HOST)))
    proxy = b.worker.run(transparent.listener, transparent.PROXY_PORT, family)
    pod_server = b.pod_worker.run(_listen, family, server_ip)
    try:
        proxy.settimeout(10)
        # the listener is node B's wherever it is used: accepted on a thread of its own, as node B's
        # worker thread is the client's
        with ThreadPoolExecutor(1) as pool:
            accepted = pool.submit(_serve_once, proxy)
            reply, client_ip = b.worker.run(_ask_from_node, family, server_ip, PORT, b"judge me", timeout=15)
            assert reply == b"JUDGE ME"
            assert accepted.result(timeout=10) == (server_ip, client_ip)
        pod_server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            pod_server.accept()
    finally:
        proxy.close()
        pod_server.close()


def test_the_nodes_own_connection_without_a_listener_is_dropped(cluster: TwoNodes) -> None:
    b = cluster.b
    _host_entries(b)
    cluster.set_policy(b, redirect_ingress_from(int(ReservedIdentity.HOST)))
    pod_server = b.pod_worker.run(_listen, socket.AF_INET, str(b.pod_ipv4))
    try:
        with pytest.raises(OSError):
            b.worker.run(_ask_from_node, socket.AF_INET, str(b.pod_ipv4), PORT, b"x", timeout=15)
    finally:
        pod_server.close()


def _ask_marked(family: int, address: str, port: int, mark: int) -> bytes:
    """_ask from a socket with SO_MARK = `mark` (a pod with CAP_NET_ADMIN in its netns could)."""
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, struct.pack("=I", mark))
        client.settimeout(5)
        client.connect((address, port))
        client.sendall(b"marked")
        return client.recv(100)


def test_a_pod_cannot_send_the_hairpin_mark(cluster: TwoNodes) -> None:
    """The veth scrubs skb->mark between the pod's netns and the node's: a pod's packets marked
    PROXY_MARK_HAIRPIN arrive at its cil_from_container unmarked and are handled as its own (were the
    mark kept, that program would drop them: they are not to the pod's own address)."""
    b = cluster.b
    node_server = b.worker.run(_listen, socket.AF_INET, str(b.ipv4))
    try:
        with ThreadPoolExecutor(1) as pool:
            served = pool.submit(_serve_once, node_server)
            reply = b.pod_worker.run(_ask_marked, socket.AF_INET, str(b.ipv4), PORT, PROXY_MARK_HAIRPIN | 1,
                                     timeout=15)
            assert reply == b"MARKED"
            assert served.result(timeout=10) == (str(b.ipv4), str(b.pod_ipv4))
    finally:
        node_server.close()
