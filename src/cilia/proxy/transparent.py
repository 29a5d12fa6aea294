"""The transparent-proxy plumbing of cilia-proxy: the policy route, listeners, who a connection is
between, and the upstream socket that leaves from the client's own address.

The datapath side is bpf/lib/proxy.h (the constants here are its C names):
- a connection an L7 rule covers is assigned (bpf_sk_assign) to the proxy's IP_TRANSPARENT
  listener on PROXY_PORT and goes up the node's stack marked MARK_TO: at the client's
  from-container (a local client), or at the server's to-container tail-called from the node's
  underlay or tunnel device (a client on another node, judged by the server's ingress L7 rules);
  the fwmark rule -> table ROUTE_TABLE (`local default dev lo`) makes it local whatever its
  destination address, so the accepted socket's local address is the real server's;
- the upstream connection leaves from the client's address (IP_TRANSPARENT) with SO_MARK =
  MARK_FROM | client identity. To a pod on this node: the server's to-container judges the
  client's identity and records the connection LB_CONN_F_PROXY_UPSTREAM, so its replies come back
  marked MARK_TO, to this socket. To a pod on another node: the device it leaves by records it the
  same way (and, tunnel, puts the identity in the VNI; native, the other node takes it from its
  ipcache by the client's address), so the replies, arriving through that device, are assigned to
  this socket (bpf/lib/proxy_upstream.h). Anything else (the world) is reached from the node's own
  address, as the pod's own connection would be masqueraded.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass

from cilia import ipproto
from cilia.bpf.objects import BpfMap
from cilia.identity.reserved import ReservedIdentity
from cilia.maps import endpoints as epmap
from cilia.maps import ipcache
from cilia.paths import NodePaths
from cilia.proxy.policy import Parties

PROXY_PORT = 15001  # C: PROXY_PORT (bpf/lib/proxy.h)
MARK_TO = 0xC3000000  # C: PROXY_MARK_TO
MARK_FROM = 0xC2000000  # C: PROXY_MARK_FROM
MARK_MASK = 0xFF000000  # C: PROXY_MARK_MASK
IDENTITY_BITS = 0xFFFFFF
ROUTE_TABLE = 2004
RULE_PRIORITY = 100
IP_TRANSPARENT = 19  # linux/in.h
IPV6_TRANSPARENT = 75  # linux/in6.h


def upstream_mark(client_identity: int) -> int:
    """SO_MARK of an upstream connection: MARK_FROM, the client's identity in the low 24 bits."""
    return MARK_FROM | (client_identity & IDENTITY_BITS)


def setup_routing() -> None:
    """Marked packets are for local sockets (the proxy's), whatever their destination address. Idempotent."""
    from pyroute2 import IPRoute  # imported here: unit tests of this module need no netlink

    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        for family, anywhere in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            for call in (lambda f=family: ipr.rule("add", table=ROUTE_TABLE, priority=RULE_PRIORITY, fwmark=MARK_TO,
                                                   fwmask=MARK_MASK, family=f),
                         lambda f=family, a=anywhere: ipr.route("add", dst=a, dst_len=0, type="local", scope=254,
                                                                oif=lo, table=ROUTE_TABLE, family=f)):
                try:
                    call()  # type: ignore[no-untyped-call]
                except Exception as exc:  # pyroute2's NetlinkError: already there from an earlier run
                    if getattr(exc, "code", None) != errno.EEXIST:
                        raise


def listener(port: int = PROXY_PORT, family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    """The transparent listener bpf_sk_assign hands connections to, one per family (inheritable:
    the supervisor keeps it across worker restarts, so SYNs queue instead of being dropped)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # IPv4 has its own listener
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        sock.bind(("::", port))
    else:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.bind(("0.0.0.0", port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


@dataclass(frozen=True)
class Connection:
    """A redirected connection: its addresses and parties."""

    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    parties: Parties
    # the upstream leaves from the client's address: the server is a pod this node's pods reach
    # unmasqueraded (here, or another node's in tunnel / native routing) or the client is remote;
    # anything else (the world) from the node's own address, as the pod's own traffic is masqueraded
    from_client: bool = True


class Peers:
    """Identities and endpoint ids from the node's pinned endpoints map and ipcache."""

    def __init__(self, node: str) -> None:
        bpffs = NodePaths(node).bpffs_dir
        self.endpoints = epmap.EndpointsMap(BpfMap.from_pin(bpffs / epmap.NAME))
        self.ipcache = BpfMap.from_pin(bpffs / ipcache.NAME)

    def connection(self, sock: socket.socket) -> Connection | None:
        """None when neither side is a local pod (the datapath redirects only for a local pod's
        rules: a local client's egress, a local server's ingress). A client on another node has the
        identity the ipcache gives its address (the one its VNI carried, in tunnel mode)."""
        client_ip, client_port = sock.getpeername()[:2]
        server_ip, server_port = sock.getsockname()[:2]
        client_identity, client_endpoint = self._party(client_ip)
        server_identity, server_endpoint = self._party(server_ip)
        if not client_endpoint and not server_endpoint:
            return None
        from_client = bool(server_endpoint) or not client_endpoint or self._pod_elsewhere(server_ip)
        return Connection(client_ip, client_port, server_ip, server_port,
                          Parties(client_identity, server_identity, client_endpoint, server_endpoint,
                                  ipproto.TCP, server_port), from_client)

    def _party(self, address: str) -> tuple[int, int]:
        """(identity, endpoint id) of one side: a local pod's, else the ipcache's identity and 0."""
        local = self.endpoints.lookup(ipaddress.ip_address(address))
        if local is not None:
            return local.identity, local.endpoint_id
        return self._identity(address), 0

    def _pod_elsewhere(self, address: str) -> bool:
        """Another node's pod that pods reach with their own address (tunnel endpoint, or native)."""
        raw = self.ipcache.lookup(ipcache.pack_host_key(ipaddress.ip_address(address)))
        if raw is None:
            return False
        value = ipcache.IpcacheValue.unpack(raw)
        return bool(value.tunnel_endpoint) or bool(value.flags & ipcache.FLAG_NATIVE)

    def _identity(self, address: str) -> int:
        raw = self.ipcache.lookup(ipcache.pack_host_key(ipaddress.ip_address(address)))
        return int(ReservedIdentity.WORLD) if raw is None else ipcache.IpcacheValue.unpack(raw).identity


async def connect_upstream(conn: Connection) -> socket.socket:
    """The proxy's connection to the real server, connected (non-blocking): to a pod on this node or
    another, from the client's address with the client's identity in the mark, so the server sees
    the client and its policy judges the client's identity; to anything else (the world), from the
    node's own address (the pod's own connection would be masqueraded)."""
    v6 = ipaddress.ip_address(conn.server_ip).version == 6
    up = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
    try:
        if conn.from_client:
            if v6:
                up.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
            else:
                up.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            # packed: the mark does not fit the C int setsockopt(int) takes
            mark = upstream_mark(conn.parties.client_identity)
            up.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, struct.pack("=I", mark))
            up.bind((conn.client_ip, 0))
        up.setblocking(False)
        await asyncio.get_running_loop().sock_connect(up, (conn.server_ip, conn.server_port))
    except BaseException:
        up.close()
        raise
    return up


async def open_upstream(conn: Connection) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """connect_upstream's socket as streams (the h11 and h2 paths)."""
    return await asyncio.open_connection(sock=await connect_upstream(conn))
