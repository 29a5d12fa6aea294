"""`cilia-proxy --node N`: the node's L7 proxy process, run in the node's network namespace.

Two layers, so that a proxy crash loses only the connections in flight:
- the supervisor (this command) sets up the policy route, creates every server's listening
  sockets once, and runs the worker with those sockets inherited, plus a standby worker already
  started and waiting; a worker that dies (kill -9, a crash) is replaced by the standby at once
  while the listeners stay, so new connections queue in the kernel's backlog instead of being
  dropped. SIGTERM stops all. The worker dies with the
  supervisor (PR_SET_PDEATHSIG): the proxy down means no listener, and the datapath then drops
  the L7-covered traffic with `proxy unavailable`.
- the worker (`--worker`) serves the listeners with the servers in SERVERS (HTTP, and DNS:
  cilia.proxy.dns_server with the `--tofqdns-*` flags), one asyncio loop (uvloop's), and logs its request counts.
Both are independent of the agent: an agent restart leaves proxied connections alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cilia.paths import NodePaths
from cilia.proxy import dns_server
from cilia.proxy.accesslog import AccessLogSender
from cilia.proxy.dns import REJECT_CODES, DnsSettings
from cilia.proxy.httpserver import HttpServer
from cilia.proxy.observe import RequestCounter
from cilia.proxy.policy import PolicyStore
from cilia.proxy.transparent import Peers, setup_routing

FDS_ENV = "CILIA_PROXY_FDS"  # supervisor -> worker: "<server>=<fd>,<fd>;<server>=<fd>"
COUNT_INTERVAL = 60.0
log = logging.getLogger("cilia.proxy")


@dataclass
class ProxyContext:
    """What every server of the worker shares."""

    node: str
    peers: Peers
    policies: PolicyStore
    accesslog: AccessLogSender | None
    counter: RequestCounter = field(default_factory=RequestCounter)


class Server(Protocol):
    """One kind of proxied traffic (HTTP, DNS, ...): the sockets it needs, and serving them."""

    name: str

    def sockets(self) -> list[socket.socket]:
        """Created by the supervisor, once (bound, listening), and handed to every worker."""
        ...

    async def serve(self, sockets: Sequence[socket.socket], ctx: ProxyContext) -> None:
        """Serves until cancelled."""
        ...


SERVERS: tuple[Callable[[], Server], ...] = (HttpServer, dns_server.DnsProxyServer)


# ----- the worker ------------------------------------------------------------------------------------
def _inherited() -> dict[str, list[socket.socket]]:
    out: dict[str, list[socket.socket]] = {}
    for part in filter(None, os.environ.get(FDS_ENV, "").split(";")):
        name, _, fds = part.partition("=")
        out[name] = [socket.socket(fileno=int(fd)) for fd in fds.split(",") if fd]
    return out


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


async def run_worker(node: str, servers: Sequence[Server], sockets: dict[str, list[socket.socket]]) -> None:
    paths = NodePaths(node)
    sender = AccessLogSender(paths.accesslog_socket)
    ctx = ProxyContext(node, Peers(node), PolicyStore(paths.proxy_policy_dir), sender)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(s.serve(sockets.get(s.name, []), ctx), name=s.name) for s in servers]
    ports = ", ".join(f"{s.name} :{sock.getsockname()[1]}" for s in servers for sock in sockets.get(s.name, []))
    log.info("cilia-proxy worker %d for node %s listening on %s", os.getpid(), node, ports)
    last = ""
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), COUNT_INTERVAL)
            summary = ctx.counter.summary()
            if summary != last:  # a small heartbeat: requests by verdict since the worker started
                log.info("requests: %s (access log: %d sent, %d lost)", summary, sender.sent, sender.lost)
                last = summary
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception():
                    raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        log.info("requests: %s", ctx.counter.summary())
        sender.close()


def worker_main(node: str, standby: bool) -> None:
    _die_with_parent()
    servers = [make() for make in SERVERS]
    inherited = _inherited()
    if not inherited:  # run on its own (tests, debugging): its own sockets
        inherited = {s.name: s.sockets() for s in servers}
    # standby: imported and ready, waiting for the supervisor's go (a byte on stdin), or its end
    if standby and not sys.stdin.buffer.read(1):
        return
    Path(NodePaths(node).run_dir / "proxy.pid").write_text(f"{os.getpid()}\n")
    # what start-up made (modules, classes: ~50k objects) lives as long as the worker: out of the
    # collector's sight, so that a full collection walks only what serving made (it walked them
    # all: tens of ms with every request waiting)
    gc.collect()
    gc.freeze()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(run_worker(node, servers, inherited))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when installed (a dependency: libuv's loop and transports in C roughly halve the
    per-request cost of the asyncio machinery); the standard one otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# ----- the supervisor --------------------------------------------------------------------------------
class Supervisor:
    """Runs the active worker and keeps a standby one (started, imported, waiting on its stdin), so
    a worker that dies is replaced in milliseconds rather than a Python start-up."""

    def __init__(self, node: str, log_level: str, worker_args: Sequence[str] = ()) -> None:
        setup_routing()
        self.sockets = {make().name: make().sockets() for make in SERVERS}
        self.fds = [s.fileno() for socks in self.sockets.values() for s in socks]
        self.env = {**os.environ, FDS_ENV: ";".join(f"{n}=" + ",".join(str(s.fileno()) for s in socks)
                                                    for n, socks in self.sockets.items())}
        self.argv = [sys.executable, "-m", "cilia.proxy.main", "--node", node, "--log-level", log_level,
                     "--worker", "--standby", *worker_args]
        self.node = node
        self.stopping = False

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv, pass_fds=self.fds, env=self.env, stdin=subprocess.PIPE)

    @staticmethod
    def _activate(worker: subprocess.Popen[bytes]) -> None:
        assert worker.stdin is not None
        with contextlib.suppress(OSError):
            worker.stdin.write(b"g")
            worker.stdin.flush()

    def run(self) -> int:
        def stop(_sig: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info("cilia-proxy supervisor %d for node %s", os.getpid(), self.node)
        pid_file = NodePaths(self.node).proxy_supervisor_pid_file
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{os.getpid()}\n")
        try:
            return self._supervise()
        finally:
            with contextlib.suppress(OSError):  # only ours: a successor may have written its own
                if pid_file.read_text().strip() == str(os.getpid()):
                    pid_file.unlink()

    def _supervise(self) -> int:
        active, standby = self._spawn(), self._spawn()
        self._activate(active)
        restarts: list[float] = []
        try:
            while not self.stopping:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    active.wait(0.2)
                if standby.poll() is not None and not self.stopping:
                    standby = self._spawn()
                code = active.poll()
                if code is None or self.stopping:
                    continue
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 10] + [now]
                if len(restarts) > 10:  # a crash loop backs off
                    time.sleep(1.0)
                self._activate(standby)
                log.error("cilia-proxy worker %d exited (%d); standby %d took over (%d restarts in 10 s)",
                          active.pid, code, standby.pid, len(restarts))
                active, standby = standby, self._spawn()
        finally:
            for worker in (active, standby):
                if worker.poll() is None:
                    worker.terminate()
            for worker in (active, standby):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.wait(5)
        return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cilia-proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--node", required=True)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--worker", action="store_true", help="serve (run by the supervisor)")
    parser.add_argument("--standby", action="store_true", help="with --worker: wait for a byte on stdin first")
    parser.add_argument("--tofqdns-dns-reject-response-code", choices=sorted(REJECT_CODES), default="refused",
                        help="the DNS proxy's answer to a query the policy refuses (default: refused)")
    parser.add_argument("--tofqdns-min-ttl", type=int, default=0,
                        help="seconds an address from an allowed answer stays allowed at least (default 0: its TTL)")
    parser.add_argument("--tofqdns-max-ips-per-hostname", type=int, default=50,
                        help="addresses kept per name; newer answers evict the oldest (default 50)")
    args = parser.parse_args(argv)
    if args.tofqdns_min_ttl < 0:
        parser.error("--tofqdns-min-ttl: must be 0 or more")
    if args.tofqdns_max_ips_per_hostname < 1:
        parser.error("--tofqdns-max-ips-per-hostname: must be at least 1")
    dns_server.SETTINGS = DnsSettings(REJECT_CODES[args.tofqdns_dns_reject_response_code], args.tofqdns_min_ttl,
                                      args.tofqdns_max_ips_per_hostname)
    worker_args = ["--tofqdns-dns-reject-response-code", args.tofqdns_dns_reject_response_code,
                   "--tofqdns-min-ttl", str(args.tofqdns_min_ttl),
                   "--tofqdns-max-ips-per-hostname", str(args.tofqdns_max_ips_per_hostname)]
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.worker:
        worker_main(args.node, args.standby)
    else:
        sys.exit(Supervisor(args.node, args.log_level, worker_args).run())


if __name__ == "__main__":
    main()
