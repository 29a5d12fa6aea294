"""cilia-proxy's HTTP server: the transparent listener on PROXY_PORT, one task per redirected
connection, judged per request: HTTP/1.1 (cilia.proxy.http) or, when the connection starts with
the HTTP/2 preface, h2c with prior knowledge (cilia.proxy.h2proxy)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cilia.proxy.h2proxy import PREFACE, serve_h2
from cilia.proxy.http import ConnInfo, serve_connection
from cilia.proxy.observe import AccessLog
from cilia.proxy.policy import judge_request
from cilia.proxy.transparent import PROXY_PORT, listener, open_upstream

if TYPE_CHECKING:
    from cilia.proxy.main import ProxyContext

log = logging.getLogger(__name__)


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


class HttpServer:
    name = "http"

    def __init__(self, port: int = PROXY_PORT) -> None:
        self.port = port

    def sockets(self) -> list[socket.socket]:
        return [listener(self.port, socket.AF_INET), listener(self.port, socket.AF_INET6)]

    async def serve(self, sockets: Sequence[socket.socket], ctx: ProxyContext) -> None:
        servers = []
        for sock in sockets:
            sock.setblocking(False)
            servers.append(await asyncio.start_server(lambda r, w: self.handle(r, w, ctx), sock=sock))
        try:
            await asyncio.Event().wait()
        finally:
            for server in servers:
                server.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: ProxyContext) -> None:
        try:
            sock = writer.get_extra_info("socket")
            conn = ctx.peers.connection(sock) if sock is not None else None
            if conn is None:
                log.warning("connection from %s: not from a local endpoint, closed", writer.get_extra_info("peername"))
                writer.close()
                return

            info = ConnInfo(lambda request: judge_request(ctx.policies, conn.parties, request),
                            AccessLog(conn, ctx.accesslog, ctx.counter))
            initial = await read_preface(reader)
            if initial.startswith(PREFACE):
                await serve_h2(reader, writer, info, lambda: open_upstream(conn), initial)
            else:
                await serve_connection(reader, writer, info, lambda: open_upstream(conn), initial=initial)
        except Exception:  # one connection's bug must not end the server
            log.exception("proxied connection failed")
            writer.close()
