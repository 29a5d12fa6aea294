"""The agent's Hubble server: the observer.Observer gRPC service and gRPC health, on the node's
unix socket (/run/cilia/<node>/hubble.sock) and optionally a TCP address (TLS when given a cert).

It runs a grpc.aio server on an event loop in a thread of its own, so that encoding and filtering
flows for clients never stalls the agent's API loop; the flow ring hands new flows to followers
on that loop (FlowRing subscribers are thread-safe by call_soon_threadsafe).

GetFlows follows Hubble's local observer: history first (the last `number` matching flows, the
first `number` with `first`, or those from `since` to `until`), then, with `follow`, new
flows as they come; flows a slow follower missed, and events the datapath lost, are reported as
LostEvent messages. Flows are encoded once (cached by uuid) whichever client reads them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf.descriptor import Descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from cilia import __version__
from cilia.agent.config import AgentConfig
from cilia.flows.filter import FlowFilter
from cilia.flows.ring import EntrySubscriber, FlowRing
from cilia.flows.tap import FlowTap
from cilia.hubble import agent_events
from cilia.hubble.agent_events import AgentEventLog
from cilia.hubble.convert import convert
from cilia.hubble.filters import FilterError, FlowFilters
from cilia.hubble.namespaces import NamespaceTracker
from cilia.hubble.pb import flow_pb2, observer_pb2, observer_pb2_grpc, peer_pb2_grpc, relay_pb2
from cilia.hubble.peer import PeerInfo, PeerService, tls_server_name
from cilia.hubble.rate import flows_rate

log = logging.getLogger(__name__)

HEALTH_SERVICE = "hubble.server.Observer"  # what `hubble status` asks the health service about
VERSION = f"cilia v{__version__}"
FOLLOW_QUEUE = 4096
NAMESPACE_TAP_BUDGET = 0.02  # the namespace tracker's pass may take 2% of a core (it samples beyond)
NAMESPACE_TAP_INTERVAL_S = 1.0
_FLOW_DESCRIPTOR = cast(Descriptor, flow_pb2.Flow.DESCRIPTOR)


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    client_cas: tuple[Path, ...] = ()


@dataclass(frozen=True)
class HubbleConfig:
    node: str
    socket: Path
    capacity: int
    listen_address: str | None = None
    tls: TlsFiles | None = None

    @classmethod
    def from_agent(cls, config: AgentConfig) -> HubbleConfig:
        tls = None
        if config.hubble_tls_cert_file is not None and config.hubble_tls_key_file is not None:
            tls = TlsFiles(config.hubble_tls_cert_file, config.hubble_tls_key_file, config.hubble_tls_client_ca_files)
        return cls(config.node, config.paths.hubble_socket, config.flow_buffer, config.hubble_listen_address, tls)

    @property
    def address(self) -> str:
        """Where another process reaches this Observer: the TCP address when it names a host, else the
        unix socket (an address like `:4244` names no host to dial)."""
        host = self.listen_address.rsplit(":", 1)[0].strip("[]") if self.listen_address else ""
        if self.listen_address and host not in ("", "0.0.0.0", "::"):
            return self.listen_address
        return f"unix://{self.socket}"

    def self_peer(self) -> PeerInfo:
        """This node as a Hubble peer (the peer service's answer when no cluster lists more)."""
        return PeerInfo(self.node, self.address, tls_server_name(self.node) if self.tls is not None else None)


class FlowSource:
    """The agent's flow ring seen as Hubble flows: converted once, cached by uuid."""

    def __init__(self, ring: FlowRing, capacity: int, to_proto: Callable[[Mapping[str, Any]], flow_pb2.Flow] = convert):
        self.ring = ring
        self.capacity = capacity
        self._convert = to_proto
        self._cache: OrderedDict[str, flow_pb2.Flow] = OrderedDict()
        self._lock = threading.Lock()
        self.conversion_errors = 0

    def proto(self, flow: Mapping[str, Any]) -> flow_pb2.Flow | None:
        """The flow as a message; None (counted, logged once) for a record that does not convert."""
        key = flow.get("uuid") or ""
        with self._lock:
            cached = self._cache.get(key) if key else None
        if cached is not None:
            return cached
        try:
            message = self._convert(flow)
        except (KeyError, TypeError, ValueError, AttributeError):
            self.conversion_errors += 1
            if self.conversion_errors == 1:
                log.exception("a flow could not be encoded for Hubble (further ones are only counted)")
            return None
        if key:
            with self._lock:
                self._cache[key] = message
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
        return message

    def snapshot(self) -> list[flow_pb2.Flow]:
        """Every buffered flow, oldest first."""
        messages = (self.proto(flow) for flow in self.ring.last(len(self.ring), FlowFilter()))
        return [m for m in messages if m is not None]


def select_history(flows: list[flow_pb2.Flow], request: observer_pb2.GetFlowsRequest,
                   filters: FlowFilters) -> list[flow_pb2.Flow]:
    """Which buffered flows a GetFlows request gets before following (Hubble's ring reader)."""
    since = request.since.ToNanoseconds() if request.HasField("since") else None
    until = request.until.ToNanoseconds() if request.HasField("until") else None
    number = request.number
    if request.follow and number == 0 and since is None:
        return []  # follow only: no need to look back
    matched = [f for f in flows if filters.matches(f) and (since is None or f.time.ToNanoseconds() >= since)]
    if since is None and not request.first and number:
        matched = matched[-number:]  # rewound by `number` matching flows, as Hubble (not by `until`)
    elif number and not request.follow:
        matched = matched[:number]  # forward from `since` or the oldest; a follower is not capped
    if until is not None:  # reading forward stops at the first flow past `until`
        for i, f in enumerate(matched):
            if f.time.ToNanoseconds() > until:
                return matched[:i]
    return matched


class ObserverService(observer_pb2_grpc.ObserverServicer):
    def __init__(self, source: FlowSource, config: HubbleConfig, started_ns: int | None = None,
                 events: AgentEventLog | None = None, namespaces: NamespaceTracker | None = None) -> None:
        self._source = source
        self._config = config
        self._started_ns = time.time_ns() if started_ns is None else started_ns
        self._started_mono = time.monotonic_ns()
        if events is None:
            events = AgentEventLog()
            events.record(agent_events.agent_started(self._started_ns), self._started_ns)
        self._events = events
        self._namespaces = namespaces or NamespaceTracker()

    # ----- flows ---------------------------------------------------------------------------------
    async def GetFlows(self, request: observer_pb2.GetFlowsRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[observer_pb2.GetFlowsResponse]:
        if request.first and request.follow:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first cannot be specified with follow")
            return
        try:
            filters = FlowFilters(request.whitelist, request.blacklist)
        except FilterError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        mask = request.field_mask if request.HasField("field_mask") and request.field_mask.paths else None
        if mask is not None and not mask.IsValidForDescriptor(_FLOW_DESCRIPTOR):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid field mask: {list(mask.paths)}")
            return
        until = request.until.ToNanoseconds() if request.follow and request.HasField("until") else None
        ring = self._source.ring
        subscriber: EntrySubscriber | None = None
        if request.follow:
            # Subscribed before the history is read, so nothing falls between the two; what is
            # in both is skipped by uuid below. Entries come unbuilt: this thread builds them.
            subscriber = EntrySubscriber(asyncio.get_running_loop(), size=FOLLOW_QUEUE)
            ring.subscribe_entries(subscriber)
        try:
            flows = await asyncio.to_thread(self._source.snapshot)
            for message in select_history(flows, request, filters):
                yield _response(message, mask)
            if subscriber is None:
                return
            seen = {f.uuid for f in flows[-FOLLOW_QUEUE:]}
            lost, datapath_lost = 0, ring.events_lost
            while True:
                for entry in await subscriber.batch():
                    flow = entry.get()
                    if flow is None:
                        continue
                    if seen:
                        if flow.get("uuid") in seen:
                            continue
                        seen = set()  # queue order is ring order: past the overlap for good
                    if subscriber.lost > lost:
                        yield _lost(flow_pb2.HUBBLE_RING_BUFFER, subscriber.lost - lost, self._config.node)
                        lost = subscriber.lost
                    if ring.events_lost > datapath_lost:
                        yield _lost(flow_pb2.PERF_EVENT_RING_BUFFER, ring.events_lost - datapath_lost,
                                    self._config.node)
                        datapath_lost = ring.events_lost
                    new = self._source.proto(flow)
                    if new is None:
                        continue
                    if until is not None and new.time.ToNanoseconds() > until:
                        return
                    if filters.matches(new):
                        yield _response(new, mask)
        finally:
            if subscriber is not None:
                ring.unsubscribe_entries(subscriber)

    # ----- status --------------------------------------------------------------------------------
    def _uptime_ns(self) -> int:
        return time.monotonic_ns() - self._started_mono

    async def ServerStatus(self, request: observer_pb2.ServerStatusRequest,
                           context: grpc.aio.ServicerContext[Any, Any]) -> observer_pb2.ServerStatusResponse:
        ring = self._source.ring
        # A single agent, like Hubble's: the connected/unavailable node counts are a relay's.
        rate = await asyncio.to_thread(_buffered_rate, ring)
        return observer_pb2.ServerStatusResponse(
            num_flows=len(ring), max_flows=self._source.capacity, seen_flows=ring.seen, uptime_ns=self._uptime_ns(),
            version=VERSION, flows_rate=rate)

    async def GetNodes(self, request: observer_pb2.GetNodesRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> observer_pb2.GetNodesResponse:
        ring = self._source.ring
        config = self._config
        node = observer_pb2.Node(
            name=config.node, version=VERSION, address=config.listen_address or f"unix://{config.socket}",
            state=relay_pb2.NODE_CONNECTED, uptime_ns=self._uptime_ns(), num_flows=len(ring),
            max_flows=self._source.capacity, seen_flows=ring.seen)
        node.tls.enabled = config.tls is not None
        node.tls.server_name = tls_server_name(config.node) if config.tls is not None else ""  # as a relay lists it
        return observer_pb2.GetNodesResponse(nodes=[node])

    async def GetNamespaces(self, request: observer_pb2.GetNamespacesRequest,
                            context: grpc.aio.ServicerContext[Any, Any]) -> observer_pb2.GetNamespacesResponse:
        # the tracker has what flows named in the last hour; the buffer adds what its tap skipped
        self._namespaces.add_flows(await asyncio.to_thread(self._source.snapshot))
        return observer_pb2.GetNamespacesResponse(namespaces=self._namespaces.namespaces())

    # ----- agent and debug events ------------------------------------------------------------------
    async def GetAgentEvents(self, request: observer_pb2.GetAgentEventsRequest,
                             context: grpc.aio.ServicerContext[Any, Any],
                             ) -> AsyncIterator[observer_pb2.GetAgentEventsResponse]:
        """The agent's events (cilia.hubble.agent_events): history as Hubble's ring reader, then
        new ones while following (a follower too slow for 1,024 queued events loses the rest)."""
        if request.first and request.follow:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first cannot be specified with follow")
            return
        node = self._config.node
        if not request.follow:
            for item in agent_events.select(self._events.snapshot(), request):
                yield agent_events.response(item, node)
            return
        follower, history = self._events.follow(asyncio.get_running_loop())
        try:
            for item in agent_events.select(history, request):
                yield agent_events.response(item, node)
            until = request.until.ToNanoseconds() if request.HasField("until") else None
            while True:
                item = await follower.queue.get()
                if until is not None and item.time_ns > until:
                    return
                yield agent_events.response(item, node)
        finally:
            self._events.unfollow(follower)

    async def GetDebugEvents(self, request: observer_pb2.GetDebugEventsRequest,
                             context: grpc.aio.ServicerContext[Any, Any],
                             ) -> AsyncIterator[observer_pb2.GetDebugEventsResponse]:
        """cilia's datapath emits no debug events: an empty stream (held open when following)."""
        if request.first and request.follow:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first cannot be specified with follow")
            return
        if request.follow:
            await asyncio.Event().wait()
        return
        yield  # an async generator that yields nothing


def _buffered_rate(ring: FlowRing) -> float:
    """Hubble's flows_rate over the buffered flows (cilia.hubble.rate)."""
    _cursor, entries, _missed = ring.since(ring.sequence - len(ring))
    return flows_rate(entries, time.time_ns())


def _response(message: flow_pb2.Flow, mask: Any) -> observer_pb2.GetFlowsResponse:
    if mask is not None:
        masked = flow_pb2.Flow()
        mask.MergeMessage(message, masked)
        message = masked
    response = observer_pb2.GetFlowsResponse(flow=message, node_name=message.node_name)
    response.time.CopyFrom(message.time)
    return response


def _lost(source: int, count: int, node: str) -> observer_pb2.GetFlowsResponse:
    response = observer_pb2.GetFlowsResponse(node_name=node)
    response.lost_events.source = source  # type: ignore[assignment]
    response.lost_events.num_events_lost = count
    response.time.GetCurrentTime()
    return response


class HubbleServer:
    """Runs the Observer and health services until stopped; start() returns once they listen."""

    def __init__(self, config: HubbleConfig, ring: FlowRing,
                 peers: Callable[[], Iterable[PeerInfo]] | None = None, events: AgentEventLog | None = None) -> None:
        self.config = config
        self.events = events  # the agent's events (None: only this server's start is recorded)
        self.namespaces = NamespaceTracker()
        self._namespace_tap = FlowTap(ring, [self.namespaces], interval=NAMESPACE_TAP_INTERVAL_S,
                                      name="hubble-namespaces", budget=NAMESPACE_TAP_BUDGET)
        # Hubble's peer service: the cluster's nodes when the agent knows them, else this node alone.
        self.peers = peers or (lambda: [config.self_peer()])
        self.source = FlowSource(ring, config.capacity)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._grace = 1.0
        self.tcp_port: int | None = None

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="hubble", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"hubble server did not start within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"hubble server failed to start: {self._error}") from self._error
        self._namespace_tap.start()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start(), which re-raises
            self._error = exc
            self._ready.set()
        finally:
            # grpc.aio leaves request-polling tasks behind: end them before the loop goes.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        config = self.config
        server = grpc.aio.server()
        observer_pb2_grpc.add_ObserverServicer_to_server(  # type: ignore[no-untyped-call]
            ObserverService(self.source, config, events=self.events, namespaces=self.namespaces), server)
        peer_pb2_grpc.add_PeerServicer_to_server(PeerService(self.peers), server)  # type: ignore[no-untyped-call]
        health = health_aio.HealthServicer()
        for service in ("", HEALTH_SERVICE):
            await health.set(service, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        config.socket.parent.mkdir(parents=True, exist_ok=True)
        config.socket.unlink(missing_ok=True)
        server.add_insecure_port(f"unix://{config.socket}")
        if config.listen_address:
            if config.tls is not None:
                self.tcp_port = server.add_secure_port(config.listen_address, server_credentials(config.tls))
            else:
                self.tcp_port = server.add_insecure_port(config.listen_address)
        await server.start()
        os.chmod(config.socket, 0o600)  # flows name every pod's peers: root only, like agent.sock
        log.info("hubble server on unix://%s%s", config.socket,
                 f" and {config.listen_address} ({'TLS' if config.tls else 'plaintext'})"
                 if config.listen_address else "")
        self._stopping = asyncio.Event()
        self._ready.set()
        await self._stopping.wait()
        await server.stop(self._grace)

    def stop(self, grace: float = 1.0) -> None:
        """Ends the streams (after `grace` seconds for calls in flight) and the thread."""
        self._grace = grace
        self._namespace_tap.stop()
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(grace + 5)
            if self._thread.is_alive():
                log.warning("hubble server did not stop within %.0f s", grace + 5)
        self.config.socket.unlink(missing_ok=True)


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """The TLS (with client CAs: mutual TLS) credentials of a Hubble server, the agent's or the relay's."""
    pair = [(tls.key.read_bytes(), tls.cert.read_bytes())]
    if not tls.client_cas:
        return grpc.ssl_server_credentials(pair)
    roots = b"".join(path.read_bytes() for path in tls.client_cas)
    return grpc.ssl_server_credentials(pair, root_certificates=roots, require_client_auth=True)
