"""`/metrics` over HTTP on `--prometheus-serve-addr` (`:9962`, `127.0.0.1:9962`, `[::1]:9962`):
prometheus_client's WSGI app in a threaded wsgiref server that `stop()` closes (its own
`start_http_server` cannot be stopped)."""

from __future__ import annotations

import logging
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

log = logging.getLogger(__name__)


def parse_address(text: str) -> tuple[str, int]:
    """`host:port`, `:port` (every address), `[v6]:port` -> (host, port); port 0 = any free one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r}: not host:port, :port or [v6]:port")
    host = host.removeprefix("[").removesuffix("]")
    return host, int(port)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _V6Server(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: " + format, *args)


class MetricsServer:
    def __init__(self, address: str, registry: CollectorRegistry) -> None:
        self.host, self.port = parse_address(address)
        self._registry = registry
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        host = self.host or "0.0.0.0"
        server_class = _V6Server if ":" in host else _Server
        self._server = make_server(host, self.port, make_wsgi_app(self._registry), server_class=server_class,
                                   handler_class=_QuietHandler)
        self.port = self._server.server_port  # port 0: the one the kernel chose
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        log.info("serving Prometheus metrics on %s:%d/metrics", host, self.port)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
