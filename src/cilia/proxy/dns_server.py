"""The DNS proxy's sockets and the node's maps behind cilia.proxy.dns.DnsCore.

Per address family (IPv4, and IPv6 when the node has it; bpf/lib/proxy.h assigns a pod's query
to the socket of its family):
UDP: one IP(V6)_TRANSPARENT socket on DNS_PROXY_PORT with IP(V6)_RECVORIGDSTADDR (the resolver
the pod asked); answers leave from a socket bound (transparent) to that resolver's address and
port. TCP: a transparent listener on DNS_PROXY_PORT; the accepted socket's own address is the
resolver's; messages are length-prefixed (RFC 1035 4.2.2). Upstream queries leave from the node's
own address, over the protocol and family the pod used.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import asdict
from typing import Any, Protocol

from cilia.api.client import AgentClient, AgentUnavailable
from cilia.bpf.objects import BpfMap
from cilia.fqdn.cache import NameCache
from cilia.maps import ct as ctmap
from cilia.maps import endpoints as epmap
from cilia.maps import ipcache as ipmap
from cilia.paths import NodePaths
from cilia.policy.engine import fqdn_identities_file
from cilia.proxy.accesslog import AccessLogSender
from cilia.proxy.dns import DNS_PROXY_PORT, MAX_MESSAGE, DnsCore, DnsSettings, Identities, IPAddress, Protocol4
from cilia.proxy.dnspolicy import DnsPolicyStore

IP_TRANSPARENT = 19  # linux/in.h
IP_RECVORIGDSTADDR = 20
IP_ORIGDSTADDR = 20
IPV6_TRANSPARENT = 75  # linux/in6.h
IPV6_RECVORIGDSTADDR = 74
IPV6_ORIGDSTADDR = 74
ORIGDST_SPACE = socket.CMSG_SPACE(28)  # a sockaddr_in6, the larger of the two
GC_INTERVAL = 1.0
WORLD = 2  # reserved:world
STATS_SAMPLES = 20000
log = logging.getLogger("cilia.proxy.dns")


class PinnedMaps:
    """cilia.proxy.dns.NodeMaps on the node's pinned maps."""

    def __init__(self, paths: NodePaths) -> None:
        pins = paths.bpffs_dir
        self.endpoints = epmap.EndpointsMap(BpfMap.from_pin(pins / epmap.NAME))
        self.ipcache = ipmap.IpcacheMap(BpfMap.from_pin(pins / ipmap.NAME))
        self.ct = ctmap.CtMap(BpfMap.from_pin(pins / ctmap.TCP_NAME), BpfMap.from_pin(pins / ctmap.ANY_NAME))
        self._exact_seen: dict[bytes, tuple[int, bool]] = {}

    def endpoint(self, address: IPAddress) -> tuple[int, int] | None:
        info = self.endpoints.lookup(address)
        return None if info is None else (info.endpoint_id, info.identity)

    def identity_of(self, address: IPAddress) -> int:
        raw = self.ipcache.map.lookup(ipmap.pack_host_key(address))  # longest prefix match
        return WORLD if raw is None else ipmap.IpcacheValue.unpack(raw).identity

    def fqdn_entry(self, address: IPAddress) -> int | None:
        key = ipmap.pack_host_key(address)
        raw = self.ipcache.map.lookup(key)
        if raw is None:
            return None
        value = ipmap.IpcacheValue.unpack(raw)
        if value.flags & ipmap.FLAG_FQDN:
            return value.identity
        if value.identity == WORLD:
            return None  # the world default: the /32 goes in front of it
        return -1 if self._exact(key, value.identity) else None  # else a covering CIDR prefix

    def _exact(self, key: bytes, identity: int) -> bool:
        # an LPM lookup answers for covering prefixes too: look for the exact key among the
        # entries, once per (address, identity found)
        known = self._exact_seen.get(key)
        if known is None or known[0] != identity:
            known = (identity, any(k == key for k, _ in self.ipcache.raw_items()))
            self._exact_seen[key] = known
        return known[1]

    def put_fqdn(self, address: IPAddress, identity: int) -> None:
        self.ipcache.put_raw(ipmap.pack_host_key(address), ipmap.IpcacheValue(identity, 0, ipmap.FLAG_FQDN).pack())

    def delete_fqdn(self, address: IPAddress) -> None:
        self.ipcache.delete_raw(ipmap.pack_host_key(address))

    def open_connection_ips(self) -> set[IPAddress]:
        now = time.monotonic()
        found: set[IPAddress] = set()
        for t, e in self.ct.entries():
            if e.expires >= now and not e.closing:
                found.add(t.destination)
                found.add(t.source)
        return found


class IdentityRequests:
    """POST /v1/fqdn/identity on one kept client: making an HTTP client costs tens of ms (its TLS
    context), more than the agent takes to allocate a set and publish it to every endpoint. Called
    from worker threads (cilia.proxy.dns.Identities runs requests off the event loop); a request
    that fails on the kept connection (the agent restarted) is tried once more on a new one."""

    def __init__(self, paths: NodePaths, timeout: float = 2.0) -> None:
        self._paths = paths
        self._timeout = timeout
        self._client: AgentClient | None = None
        self._lock = threading.Lock()

    def _get(self, fresh: bool) -> AgentClient:
        with self._lock:
            if fresh and self._client is not None:
                self._client.close()
                self._client = None
            if self._client is None:
                self._client = AgentClient(self._paths.socket, timeout=self._timeout)
            return self._client

    def __call__(self, selectors: frozenset[str]) -> int | None:
        body = {"selectors": sorted(selectors)}
        try:
            answer = self._get(False).post("/v1/fqdn/identity", body)
        except AgentUnavailable:
            answer = self._get(True).post("/v1/fqdn/identity", body)
        number = answer.get("identity")
        return int(number) if number is not None else None

    def warm(self) -> None:
        """Make the client ahead (at start), so the first set request does not pay for it."""
        self._get(False)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _orig_dst(ancdata: list[tuple[int, int, bytes]]) -> tuple[str, int] | None:
    """The query's original destination from IP_ORIGDSTADDR (sockaddr_in) or IPV6_ORIGDSTADDR
    (sockaddr_in6: family, port, flow info, address, scope)."""
    for level, kind, data in ancdata:
        if level == socket.SOL_IP and kind == IP_ORIGDSTADDR and len(data) >= 8:
            port = struct.unpack("!H", data[2:4])[0]
            return socket.inet_ntoa(data[4:8]), port
        if level == socket.IPPROTO_IPV6 and kind == IPV6_ORIGDSTADDR and len(data) >= 24:
            port = struct.unpack("!H", data[2:4])[0]
            return str(ipaddress.IPv6Address(data[8:24])), port
    return None


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


SETTINGS = DnsSettings()  # cilia-proxy's --tofqdns-* flags (set by cilia.proxy.main before the servers exist)


class DnsProxyServer:
    """cilia.proxy.main's Server for DNS: the supervisor creates the sockets once, each worker
    serves them (a killed worker's successor takes over the same sockets)."""

    name = "dns"

    def sockets(self) -> list[socket.socket]:
        out = [_udp_socket(socket.AF_INET), _tcp_socket(socket.AF_INET)]
        try:
            out += [_udp_socket(socket.AF_INET6), _tcp_socket(socket.AF_INET6)]
        except OSError as exc:  # a node without IPv6: its pods cannot ask over IPv6 either
            log.warning("DNS proxy: no IPv6 sockets (%s); serving IPv4 only", exc)
        return out

    async def serve(self, sockets: Sequence[socket.socket], ctx: ProxyContextLike) -> None:
        udp = [s for s in sockets if s.type == socket.SOCK_DGRAM]
        tcp = [s for s in sockets if s.type == socket.SOCK_STREAM]
        worker = DnsWorker(ctx.node, SETTINGS, ctx.accesslog)
        servers = await worker.start(udp, tcp)
        try:
            async with contextlib.AsyncExitStack() as stack:
                for server in servers:
                    await stack.enter_async_context(server)
                await asyncio.Event().wait()  # until cancelled
        finally:
            for sock in udp:
                asyncio.get_running_loop().remove_reader(sock.fileno())
            worker.close()


class ProxyContextLike(Protocol):
    node: str
    accesslog: AccessLogSender | None


class DnsWorker:
    def __init__(self, node: str, settings: DnsSettings, accesslog: AccessLogSender | None = None) -> None:
        self.paths = NodePaths(node)
        self.settings = settings
        cache = NameCache(min_ttl=settings.min_ttl, max_ips=settings.max_ips)
        try:
            cache.load(self.paths.fqdn_cache_file)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("name cache %s unreadable, starting empty: %s", self.paths.fqdn_cache_file, exc)
        self.maps = PinnedMaps(self.paths)
        store = DnsPolicyStore(self.paths.dns_policy_dir)
        self._requests = IdentityRequests(self.paths)
        self.identities = Identities(fqdn_identities_file(self.paths.state_dir), self._requests)
        self.core = DnsCore(self.maps, store.get, self.identities, cache, settings,
                            accesslog if accesslog is not None else AccessLogSender(self.paths.accesslog_socket),
                            self._upstream)
        self._reply_socks: dict[tuple[str, int], socket.socket] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ----- upstream: the node is the resolver's client -------------------------------------------
    async def _upstream(self, data: bytes, server: tuple[str, int], protocol: Protocol4) -> bytes:
        loop = asyncio.get_running_loop()
        if protocol == "TCP":
            reader, writer = await asyncio.open_connection(server[0], server[1])
            try:
                writer.write(struct.pack("!H", len(data)) + data)
                await writer.drain()
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                return await reader.readexactly(size)
            finally:
                writer.close()
        sock = socket.socket(_family(server[0]), socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, server)
            await loop.sock_sendall(sock, data)
            while True:
                answer = await loop.sock_recv(sock, MAX_MESSAGE)
                if answer[:2] == data[:2]:
                    return answer
        finally:
            sock.close()

    # ----- UDP -----------------------------------------------------------------------------------
    def _reply_socket(self, source: tuple[str, int]) -> socket.socket:
        sock = self._reply_socks.get(source)
        if sock is None:
            family = _family(source[0])
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
            else:
                sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            sock.bind(source)
            sock.setblocking(False)
            self._reply_socks[source] = sock
        return sock

    def _on_udp(self, sock: socket.socket) -> None:
        for _ in range(64):  # bounded per wakeup: TCP and timers get their turn
            try:
                data, ancdata, _flags, client = sock.recvmsg(MAX_MESSAGE, ORIGDST_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("DNS UDP receive failed: %s", exc)
                return
            server = _orig_dst(ancdata)
            if server is None:
                continue
            self._spawn(self._answer_udp(data, client[:2], server))

    async def _answer_udp(self, data: bytes, client: tuple[str, int], server: tuple[str, int]) -> None:
        reply = await self.core.handle(data, client, server, "UDP")
        if reply is None:
            return
        if len(reply) > 512 and not _has_edns(data):
            reply = _truncated(reply)
        try:
            self._reply_socket(server).sendto(reply, client)
        except OSError as exc:
            log.warning("DNS answer to %s from %s failed: %s", client, server, exc)

    # ----- TCP -----------------------------------------------------------------------------------
    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")[:2]
        server = writer.get_extra_info("sockname")[:2]
        try:
            for _ in range(1000):  # bounded: a connection carries at most this many queries
                header = await asyncio.wait_for(reader.readexactly(2), 30)
                size = struct.unpack("!H", header)[0]
                data = await asyncio.wait_for(reader.readexactly(size), 10)
                reply = await self.core.handle(data, client, server, "TCP")
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    # ----- housekeeping --------------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(GC_INTERVAL)
            try:
                if self.paths.fqdn_clean_request.exists():
                    self.paths.fqdn_clean_request.unlink(missing_ok=True)
                    log.info("name cache cleaned: %d addresses forgotten", self.core.clean())
                self.core.gc()
                self.save()
                self._write_stats()
            except Exception:
                log.exception("DNS proxy housekeeping failed")

    def _write_stats(self) -> None:
        """Counters and the recent answer -> ipcache delays (bench.dns reads them)."""
        delays = self.core.ipcache_delays
        del delays[: max(0, len(delays) - STATS_SAMPLES)]
        if not self.paths.run_dir.is_dir():  # the node is being torn down: never re-create its run dir
            return
        path = self.paths.run_dir / "proxy" / "dns-stats.json"
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**asdict(self.core.stats), "cache_ips": len(self.core.cache.ips()),
                                   "set_requests": self.identities.requests,
                                   "ipcache_delays_s": delays}))
        os.replace(tmp, path)

    def save(self) -> None:
        if self.core.dirty:
            self.core.dirty = False
            self.core.cache.save(self.paths.fqdn_cache_file)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self, udp: Sequence[socket.socket], tcp: Sequence[socket.socket],
                    ) -> list[asyncio.AbstractServer]:
        loop = asyncio.get_running_loop()
        self.identities.refresh()
        for sock in udp:
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._on_udp, sock)
        servers: list[asyncio.AbstractServer] = []
        for sock in tcp:
            sock.setblocking(False)
            servers.append(await asyncio.start_server(self._on_tcp, sock=sock))
        self._spawn(self._housekeeping())
        self._spawn(asyncio.to_thread(self._requests.warm))
        log.info("DNS proxy listening on :%d (UDP, TCP; %s)", DNS_PROXY_PORT,
                 ", ".join(sorted({"IPv6" if s.family == socket.AF_INET6 else "IPv4" for s in udp})))
        return servers

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.save()
        self._requests.close()
        for sock in self._reply_socks.values():
            sock.close()


def _transparent(sock: socket.socket, family: socket.AddressFamily) -> str:
    """IP(V6)_TRANSPARENT (and IPV6_V6ONLY: IPv4 has its own socket); returns the wildcard address."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        return "::"
    sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    return "0.0.0.0"


def _udp_socket(family: socket.AddressFamily) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        anywhere = _transparent(sock, family)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1)
        else:
            sock.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
        sock.bind((anywhere, DNS_PROXY_PORT))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _tcp_socket(family: socket.AddressFamily) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((_transparent(sock, family), DNS_PROXY_PORT))
        sock.listen(256)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _has_edns(data: bytes) -> bool:
    return len(data) > 12 and struct.unpack("!H", data[10:12])[0] > 0  # ARCOUNT: an OPT record, likely


def _truncated(reply: bytes) -> bytes:
    """A UDP answer over 512 bytes to a client without EDNS: header and question only, TC set."""
    import dns.flags
    import dns.message

    message = dns.message.from_wire(reply)
    short = dns.message.make_response(dns.message.make_query(message.question[0].name, message.question[0].rdtype))
    short.id = message.id
    short.flags |= dns.flags.TC
    short.set_rcode(message.rcode())
    return short.to_wire()

