"""`cilia-proxy --node N`: the node's transparent L7 proxy, run in the node's network namespace.

It sets up its own policy route (packets the datapath marked PROXY_MARK_TO are delivered locally:
`ip rule fwmark` -> table 2004, `local default dev lo`), listens with IP_TRANSPARENT on
PROXY_PORT (bpf/lib/proxy.h assigns redirected connections to it), learns who the client is
(identity) and whose rules apply (the destination endpoint) from the node's pinned endpoints map,
and reads the rules from the files the agent writes (cilia.proxy.policy). Upstream connections
leave from the client's own address (IP_TRANSPARENT) with SO_MARK = PROXY_MARK_FROM | identity,
so the server's ingress policy still judges the client. Independent of the agent: an agent
restart leaves proxied connections alone.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import logging
import signal
import socket

from cilia import ipproto
from cilia.bpf.objects import BpfMap
from cilia.maps import endpoints as epmap
from cilia.paths import NodePaths
from cilia.proxy.http import ConnInfo, serve_connection
from cilia.proxy.policy import PolicyStore

PROXY_PORT = 15001  # C: PROXY_PORT (bpf/lib/proxy.h)
MARK_TO = 0xC3000000  # C: PROXY_MARK_TO
MARK_FROM = 0xC2000000  # C: PROXY_MARK_FROM
MARK_MASK = 0xFF000000
ROUTE_TABLE = 2004
RULE_PRIORITY = 100
IP_TRANSPARENT = 19  # linux/in.h
log = logging.getLogger("cilia.proxy")


def setup_routing() -> None:
    """Marked packets are for local sockets (the proxy's), whatever their destination address."""
    from pyroute2 import IPRoute  # imported here: unit tests of this module need no netlink

    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        for call in (lambda: ipr.rule("add", table=ROUTE_TABLE, priority=RULE_PRIORITY, fwmark=MARK_TO,
                                      fwmask=MARK_MASK, family=socket.AF_INET),
                     lambda: ipr.route("add", dst="0.0.0.0", dst_len=0, type="local", scope=254, oif=lo,
                                       table=ROUTE_TABLE, family=socket.AF_INET)):
            try:
                call()  # type: ignore[no-untyped-call]
            except Exception as exc:  # pyroute2's NetlinkError: already there from an earlier run
                if getattr(exc, "code", None) != errno.EEXIST:
                    raise


def listener(port: int = PROXY_PORT) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Proxy:
    def __init__(self, node: str) -> None:
        paths = NodePaths(node)
        self.endpoints = epmap.EndpointsMap(BpfMap.from_pin(paths.bpffs_dir / epmap.NAME))
        self.policies = PolicyStore(paths.proxy_policy_dir)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        client_ip, _client_port = writer.get_extra_info("peername")[:2]
        server_ip, server_port = writer.get_extra_info("sockname")[:2]
        client = self.endpoints.lookup(ipaddress.ip_address(client_ip))
        server = self.endpoints.lookup(ipaddress.ip_address(server_ip))
        if client is None or server is None or sock is None:
            log.warning("connection %s -> %s:%s: not between local endpoints, closed", client_ip, server_ip,
                        server_port)
            writer.close()
            return
        identity, endpoint_id = client.identity, server.endpoint_id

        async def open_upstream() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                up.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
                up.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK_FROM | (identity & 0xFFFFFF))
                up.bind((client_ip, 0))
                up.setblocking(False)
                await asyncio.get_running_loop().sock_connect(up, (server_ip, server_port))
            except BaseException:
                up.close()
                raise
            return await asyncio.open_connection(sock=up)

        info = ConnInfo(identity, ipproto.TCP, server_port, lambda: self.policies.get(endpoint_id))
        await serve_connection(reader, writer, info, open_upstream)


async def _run(node: str) -> None:
    proxy = Proxy(node)
    server = await asyncio.start_server(proxy.handle, sock=listener())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("cilia-proxy for node %s listening on :%d", node, PROXY_PORT)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cilia-proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--node", required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    setup_routing()  # before the event loop: pyroute2 runs one of its own
    asyncio.run(_run(args.node))


if __name__ == "__main__":
    main()
