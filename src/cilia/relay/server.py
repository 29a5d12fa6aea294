"""The cilia-relay process: the node pool fed by discovery, the relay's Observer and health
services on its listen address (a unix socket, or TCP), its /metrics and the service map page.
Everything runs on one asyncio loop; `Relay.run()` returns when `stop()` is called. The gRPC
server is the agents' own over HTTP/2 (cilia.hubble.h2server) unless `server_impl` is "grpcio"."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
import uvicorn
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from prometheus_client import start_http_server

from cilia.hubble.grpcwire import MethodTable
from cilia.hubble.h2server import DEFAULT_IMPLEMENTATION, GrpcServer, tls_context
from cilia.hubble.pb import observer_pb2_grpc
from cilia.hubble.server import HEALTH_SERVICE, TlsFiles, server_credentials
from cilia.relay import metrics, web
from cilia.relay.discovery import Source
from cilia.relay.merge import DEFAULT_WINDOW_S
from cilia.relay.observer import RelayObserver
from cilia.relay.pool import NodePool, TlsClient

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/run/cilia/relay/hubble.sock")


@dataclass(frozen=True)
class RelayConfig:
    listen_address: str = f"unix://{DEFAULT_SOCKET}"
    metrics_address: str | None = None  # host:port
    ui_address: str | None = None  # host:port
    window: float = DEFAULT_WINDOW_S
    tls: TlsClient | None = None  # how the nodes are dialled
    server_tls: TlsFiles | None = None  # the relay's own listen address with TLS (TCP only)
    server_impl: str = DEFAULT_IMPLEMENTATION  # "h2" or "grpcio"


def split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class Relay:
    def __init__(self, config: RelayConfig, sources: list[Source]) -> None:
        self.config = config
        self.sources = sources
        self.pool = NodePool(config.tls)
        self.observer = RelayObserver(self.pool, window=config.window)
        self._stopping: asyncio.Event | None = None
        self.ready = asyncio.Event()
        self.port: int | None = None  # the TCP port bound (":0" picks one)

    def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def _services(self, server: grpc.aio.Server | MethodTable) -> None:
        observer_pb2_grpc.add_ObserverServicer_to_server(self.observer, server)  # type: ignore[no-untyped-call]
        health = health_aio.HealthServicer()
        for service in ("", HEALTH_SERVICE):
            await health.set(service, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)

    async def run(self) -> None:
        self._stopping = asyncio.Event()
        config = self.config
        socket = Path(config.listen_address.removeprefix("unix://")) \
            if config.listen_address.startswith("unix://") else None
        if socket is not None:
            socket.parent.mkdir(parents=True, exist_ok=True)
            socket.unlink(missing_ok=True)
        server: grpc.aio.Server | GrpcServer
        if config.server_impl == "grpcio":
            server = grpc.aio.server()
            await self._services(server)
            if config.server_tls is not None and socket is None:
                self.port = server.add_secure_port(config.listen_address, server_credentials(config.server_tls))
            else:
                self.port = server.add_insecure_port(config.listen_address)
        else:
            methods = MethodTable()
            await self._services(methods)
            server = GrpcServer(methods)
        tasks = [asyncio.get_running_loop().create_task(source.run(self.pool), name=f"discovery-{i}")
                 for i, source in enumerate(self.sources)]
        ui: uvicorn.Server | None = None
        metrics_server = None
        try:
            if isinstance(server, GrpcServer):
                if socket is not None:
                    await server.add_unix(socket)
                else:
                    tls = config.server_tls
                    self.port = await server.add_tcp(config.listen_address, None if tls is None else tls_context(
                        tls.cert, tls.key, tls.client_cas))
            else:
                await server.start()
            if socket is not None:
                os.chmod(socket, 0o600)  # flows name every pod's peers: root only, like the agents'
            if config.metrics_address:
                host, port = split_host_port(config.metrics_address)
                metrics_server, _ = start_http_server(port, host, registry=metrics.registry(self.pool, self.observer))
            if config.ui_address:
                host, port = split_host_port(config.ui_address)
                ui = uvicorn.Server(uvicorn.Config(web.app(self.pool, self.observer), host=host, port=port,
                                                   log_level="warning", lifespan="off"))
                # The relay's own SIGTERM/SIGINT handlers stop everything; uvicorn must not take them over.
                ui.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
                tasks.append(asyncio.get_running_loop().create_task(ui.serve(), name="ui"))
            log.info("cilia-relay serving on %s%s%s", config.listen_address,
                     f", metrics on {config.metrics_address}" if config.metrics_address else "",
                     f", service map on http://{config.ui_address}/" if config.ui_address else "")
            self.ready.set()
            await self._stopping.wait()
        finally:
            if ui is not None:
                ui.should_exit = True
            await server.stop(1.0)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if metrics_server is not None:
                metrics_server.shutdown()
            await self.pool.close()
            if socket is not None:
                socket.unlink(missing_ok=True)
