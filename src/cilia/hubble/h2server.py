"""cilia's own gRPC server on asyncio (cilia.hubble.h2conn per connection): its listeners (unix
sockets, TCP, TLS with ALPN h2 and optional client certificates) and its shutdown (GOAWAY,
`grace` seconds for calls in flight, then the rest end UNAVAILABLE).

It serves whatever a MethodTable holds: the agent's Observer, peer and health services
(cilia.hubble.server), the relay's (cilia.relay.server). grpcio's server remains the fallback
(`--hubble-server-impl grpcio`)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from pathlib import Path

from cilia.hubble.grpcwire import MethodTable
from cilia.hubble.h2conn import GrpcConnection

IMPLEMENTATIONS = ("h2", "grpcio")  # the --hubble-server-impl choices, the default first
DEFAULT_IMPLEMENTATION = IMPLEMENTATIONS[0]


def tls_context(cert: Path, key: Path, client_cas: Sequence[Path] = ()) -> ssl.SSLContext:
    """A server's TLS: TLS 1.2 or later, ALPN h2 (grpc-go insists on it); with client CAs, mutual TLS."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    if client_cas:
        context.verify_mode = ssl.CERT_REQUIRED
        for path in client_cas:
            context.load_verify_locations(cafile=str(path))
    return context


def split_address(address: str) -> tuple[str | None, int]:
    """`host:port`, `[v6]:port` or `:port` (every address); ValueError for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r}: expected HOST:PORT")
    host = host.strip("[]")
    return (host or None), int(port)


class GrpcServer:
    """Serves `methods` on the listeners added, on the running loop, until stop()."""

    def __init__(self, methods: MethodTable) -> None:
        self.methods = methods
        self._servers: list[asyncio.Server] = []
        self._connections: set[GrpcConnection] = set()

    def _protocol(self) -> GrpcConnection:
        connection = GrpcConnection(self.methods, self._connections.discard)
        self._connections.add(connection)
        return connection

    async def add_unix(self, path: Path) -> None:
        loop = asyncio.get_running_loop()
        self._servers.append(await loop.create_unix_server(self._protocol, str(path)))

    async def add_tcp(self, address: str, tls: ssl.SSLContext | None = None) -> int:
        """Listens on `address`; the port bound (`:0` picks one)."""
        host, port = split_address(address)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self._protocol, host, port, ssl=tls, reuse_address=True)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def stop(self, grace: float) -> None:
        for server in self._servers:
            server.close()
        connections = list(self._connections)
        for connection in connections:
            connection.goaway()
        if connections and grace > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(c.idle.wait() for c in connections)), grace)
        tasks = [task for connection in connections for task in connection.shutdown()]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1)
