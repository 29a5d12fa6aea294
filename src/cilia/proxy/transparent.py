"""The transparent-proxy plumbing of cilia-proxy: the policy route, listeners, who a connection is
between, and the upstream socket that leaves from the client's own address.

The datapath side is bpf/lib/proxy.h (the constants here are its C names):
- a connection an L7 rule covers is assigned (bpf_sk_assign, at the client's from-container) to
  the proxy's IP_TRANSPARENT listener on PROXY_PORT and goes up the node's stack marked MARK_TO;
  the fwmark rule -> table ROUTE_TABLE (`local default dev lo`) makes it local whatever its
  destination address, so the accepted socket's local address is the real server's;
- the upstream connection to a pod on this node leaves from the client's address (IP_TRANSPARENT)
  with SO_MARK = MARK_FROM | client identity: the server's to-container judges the client's
  identity and records the connection LB_CONN_F_PROXY_UPSTREAM, so its replies come back marked
  MARK_TO, to this socket. A server elsewhere is reached from the node's own address.
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

    @property
    def server_is_local(self) -> bool:
        return self.parties.server_endpoint != 0


class Peers:
    """Identities and endpoint ids from the node's pinned endpoints map and ipcache."""

    def __init__(self, node: str) -> None:
        bpffs = NodePaths(node).bpffs_dir
        self.endpoints = epmap.EndpointsMap(BpfMap.from_pin(bpffs / epmap.NAME))
        self.ipcache = BpfMap.from_pin(bpffs / ipcache.NAME)

    def connection(self, sock: socket.socket) -> Connection | None:
        """None when the client is not a local pod (only a pod's from-container redirects)."""
        client_ip, client_port = sock.getpeername()[:2]
        server_ip, server_port = sock.getsockname()[:2]
        client = self.endpoints.lookup(ipaddress.ip_address(client_ip))
        if client is None:
            return None
        server = self.endpoints.lookup(ipaddress.ip_address(server_ip))
        if server is not None:
            server_identity, server_endpoint = server.identity, server.endpoint_id
        else:
            server_identity, server_endpoint = self._identity(server_ip), 0
        return Connection(client_ip, client_port, server_ip, server_port,
                          Parties(client.identity, server_identity, client.endpoint_id, server_endpoint,
                                  ipproto.TCP, server_port))

    def _identity(self, address: str) -> int:
        raw = self.ipcache.lookup(ipcache.pack_host_key(ipaddress.ip_address(address)))
        return int(ReservedIdentity.WORLD) if raw is None else ipcache.IpcacheValue.unpack(raw).identity


async def connect_upstream(conn: Connection) -> socket.socket:
    """The proxy's connection to the real server, connected (non-blocking): from the client's
    address with the client's identity in the mark to a local pod, from the node's own address to
    anything else."""
    v6 = ipaddress.ip_address(conn.server_ip).version == 6
    up = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
    try:
        if conn.server_is_local:
            if v6:
                up.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
            else:
                up.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            # packed: the mark does not fit the C int setsockopt(int) takes
            mark = MARK_FROM | (conn.parties.client_identity & IDENTITY_BITS)
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
