"""cilia-proxy's HTTP server: the transparent listener on PROXY_PORT, every redirected connection
judged per request. HTTP/1.1 goes the fast path (cilia.proxy.http1fast: asyncio Protocols, the
client's bytes sent on as they are); what that path does not take (HTTP/2's preface: h2c with
prior knowledge, cilia.proxy.h2proxy; Upgrade, CONNECT, Expect, malformed or oversized requests:
h11, cilia.proxy.http) is handed over as streams, from the request it did not take on.
`CILIA_PROXY_HTTP1_FAST=0` in the proxy's environment hands every connection over at its start
(the streams paths alone, as before the fast path)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cilia.proxy.h2proxy import PREFACE, serve_h2
from cilia.proxy.http import ConnInfo, serve_connection
from cilia.proxy.http1fast import ClientLeg, Route
from cilia.proxy.observe import AccessLog
from cilia.proxy.policy import ConnectionJudge
from cilia.proxy.transparent import PROXY_PORT, Connection, connect_upstream, listener, open_upstream

if TYPE_CHECKING:
    from cilia.proxy.main import ProxyContext

log = logging.getLogger(__name__)
FAST_ENV = "CILIA_PROXY_HTTP1_FAST"


async def read_preface(reader: asyncio.StreamReader, timeout: float = 30.0) -> bytes:
    """The connection's first bytes: the whole HTTP/2 preface, or as soon as they cannot be one."""
    initial = b""
    while len(initial) < len(PREFACE) and PREFACE.startswith(initial):
        try:
            chunk = await asyncio.wait_for(reader.read(len(PREFACE) - len(initial)), timeout)
        except (TimeoutError, ConnectionError, OSError):
            break
        if not chunk:
            break
        initial += chunk
    return initial


async def serve_streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: ConnInfo,
                        conn: Connection, at_start: bool) -> None:
    """The streams paths: from the connection's start (HTTP/2 or HTTP/1.1 by its first bytes), or
    HTTP/1.1 (h11) from a request the fast path handed over."""
    try:
        if not at_start:
            await serve_connection(reader, writer, info, lambda: open_upstream(conn))
            return
        initial = await read_preface(reader)
        if initial.startswith(PREFACE):
            await serve_h2(reader, writer, info, lambda: open_upstream(conn), initial)
        else:
            await serve_connection(reader, writer, info, lambda: open_upstream(conn), initial=initial)
    except Exception:  # one connection's bug must not end the server
        log.exception("proxied connection failed")
        writer.close()


class HttpServer:
    name = "http"

    def __init__(self, port: int = PROXY_PORT) -> None:
        self.port = port
        self.fast = os.environ.get(FAST_ENV, "1") != "0"

    def sockets(self) -> list[socket.socket]:
        return [listener(self.port, socket.AF_INET), listener(self.port, socket.AF_INET6)]

    async def serve(self, sockets: Sequence[socket.socket], ctx: ProxyContext) -> None:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        servers = []
        for sock in sockets:
            sock.setblocking(False)
            servers.append(await loop.create_server(lambda: ClientLeg(lambda t: self.route(t, ctx), tasks),
                                                    sock=sock))
        try:
            await asyncio.Event().wait()
        finally:
            for server in servers:
                server.close()
            for task in list(tasks):
                task.cancel()

    def route(self, transport: asyncio.Transport, ctx: ProxyContext) -> Route | None:
        """Who the connection is between (None: not from a local endpoint: closed)."""
        sock = transport.get_extra_info("socket")
        conn = ctx.peers.connection(sock) if sock is not None else None
        if conn is None:
            log.warning("connection from %s: not from a local endpoint, closed", transport.get_extra_info("peername"))
            return None
        info = ConnInfo(ConnectionJudge(ctx.policies, conn.parties),
                        AccessLog(conn, ctx.accesslog, ctx.counter))

        async def fallback(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, at_start: bool) -> None:
            await serve_streams(reader, writer, info, conn, at_start)

        return Route(info, lambda: connect_upstream(conn), fallback, fast=self.fast)
