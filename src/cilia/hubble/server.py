"""The agent's Hubble server: the observer.Observer gRPC service, Hubble's peer service and gRPC
health, on the node's unix socket (/run/cilia/<node>/hubble.sock) and optionally a TCP address
(TLS when given a cert).

It runs on an event loop in a thread of its own, so that encoding and filtering flows for clients
never stalls the agent's API loop; the flow ring hands new flows to followers on that loop
(FlowRing subscribers are thread-safe by call_soon_threadsafe). The gRPC server is cilia's own
over HTTP/2 (cilia.hubble.h2server, on uvloop: many flows per DATA frame) unless the config asks
for grpcio's (`--hubble-server-impl grpcio`); both serve the same servicer objects.

GetFlows follows Hubble's local observer: history first (the last `number` matching flows, the
first `number` with `first`, or those from `since` to `until`), then, with `follow`, new
flows as they come; flows a slow follower missed, and events the datapath lost, are reported as
LostEvent messages. Flows are encoded once (cached in their ring entry) whichever client reads
them, and sent as bytes: GetFlows' responses are serialized by us (a datapath record straight
from its raw bytes, cilia.hubble.wire; anything else through the flow dict and convert), so
grpcio does no protobuf work per message; a field mask is applied to the bytes, and a request
without filters or time bounds never parses a flow at all."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import uvloop
from google.protobuf.descriptor import Descriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from cilia import __version__
from cilia.agent.config import AgentConfig
from cilia.flows.ring import EntrySubscriber, FlowEntry, FlowRing, encode_entries
from cilia.flows.tap import FlowTap
from cilia.hubble import agent_events
from cilia.hubble.agent_events import AgentEventLog
from cilia.hubble.convert import convert
from cilia.hubble.filters import FilterError, FlowFilters
from cilia.hubble.grpcwire import MethodTable
from cilia.hubble.h2server import DEFAULT_IMPLEMENTATION, GrpcServer, tls_context
from cilia.hubble.namespaces import NamespaceTracker
from cilia.hubble.pb import flow_pb2, observer_pb2, observer_pb2_grpc, peer_pb2_grpc, relay_pb2
from cilia.hubble.peer import PeerInfo, PeerService, tls_server_name
from cilia.hubble.rate import flows_rate
from cilia.hubble.wire import WireMask

log = logging.getLogger(__name__)

HEALTH_SERVICE = "hubble.server.Observer"  # what `hubble status` asks the health service about
VERSION = f"cilia v{__version__}"
FOLLOW_QUEUE = 4096
HISTORY_BATCH = 256  # history flows per batch (each batch is framed at once by cilia's own server)
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
    follow_budget: float | None = None  # of one core, per follower; None: no limit
    server_impl: str = DEFAULT_IMPLEMENTATION  # "h2" (cilia.hubble.h2server) or "grpcio"

    @classmethod
    def from_agent(cls, config: AgentConfig) -> HubbleConfig:
        tls = None
        if config.hubble_tls_cert_file is not None and config.hubble_tls_key_file is not None:
            tls = TlsFiles(config.hubble_tls_cert_file, config.hubble_tls_key_file, config.hubble_tls_client_ca_files)
        return cls(config.node, config.paths.hubble_socket, config.flow_buffer, config.hubble_listen_address, tls,
                   config.hubble_follow_cpu_budget or None, config.hubble_server_impl)

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
    """The agent's flow ring seen as Hubble flows: each entry encoded once (kept in the entry),
    by the fast path when it has one, else converted (cached by uuid) and serialized."""

    def __init__(self, ring: FlowRing, capacity: int, to_proto: Callable[[Mapping[str, Any]], flow_pb2.Flow] = convert):
        self.ring = ring
        self.capacity = capacity
        self._convert = to_proto
        self._cache: OrderedDict[str, flow_pb2.Flow] = OrderedDict()
        self._lock = threading.Lock()
        self.conversion_errors = 0
        self.fast_errors = 0

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
            self._conversion_failed()
            return None
        if key:
            with self._lock:
                self._cache[key] = message
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
        return message

    def _conversion_failed(self) -> None:
        self.conversion_errors += 1
        if self.conversion_errors == 1:
            log.exception("a flow could not be encoded for Hubble (further ones are only counted)")

    def wire(self, entry: FlowEntry) -> bytes:
        """The entry's GetFlowsResponse, serialized; b"" for one with nothing to send (undecodable,
        not convertible)."""
        data = entry.wire
        if data is not None:
            return data
        try:
            fast = entry.encode()
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            self.fast_errors += 1  # the slow path below decides (and reports) what it is
            fast = None
        if fast is not None:
            data = fast
        else:
            try:
                flow = entry.get()
            except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError):
                self._conversion_failed()
                flow = None
            message = self.proto(flow) if flow is not None else None
            data = _response(message, None).SerializeToString() if message is not None else b""
        entry.wire = data
        return data

    def wire_many(self, entries: list[FlowEntry]) -> list[bytes]:
        """`wire` of each entry, those not encoded yet a context's batch at once (a follower's
        batch: cilia.flows.ring.encode_entries); any the batch does not give go as `wire` sends them."""
        fresh = [entry for entry in entries if entry.wire is None]
        if fresh:
            try:
                encoded = encode_entries(fresh)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError):
                encoded = []  # one record the batch could not take: each is tried alone, below
            for entry, data in zip(fresh, encoded, strict=False):
                if data is not None:
                    entry.wire = data
        return [entry.wire if entry.wire is not None else self.wire(entry) for entry in entries]

    def history(self) -> tuple[list[Served], int]:
        """Every buffered flow, oldest first, and the sequence number the history ends at."""
        data, seq = self.history_data()
        return [Served(item) for item in data], seq

    def history_data(self) -> tuple[list[bytes], int]:
        """history's flows as they are sent (for a request that looks at none of them)."""
        entries = self.ring.entries()
        return [data for data in map(self.wire, entries) if data], entries[-1].seq if entries else self.ring.sequence

    def snapshot(self) -> list[flow_pb2.Flow]:
        """Every buffered flow, oldest first."""
        return [item.flow() for item in self.history()[0]]


class Served:
    """A flow as it is sent (GetFlowsResponse bytes), parsed only when a filter, a time bound or a
    field mask needs to look at it."""

    __slots__ = ("_flow", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._flow: flow_pb2.Flow | None = None

    def flow(self) -> flow_pb2.Flow:
        if self._flow is None:
            self._flow = observer_pb2.GetFlowsResponse.FromString(self.data).flow
        return self._flow


def select_history(flows: list[Any], request: observer_pb2.GetFlowsRequest, filters: FlowFilters,
                   flow_of: Callable[[Any], flow_pb2.Flow] = lambda f: f) -> list[Any]:
    """Which buffered flows a GetFlows request gets before following (Hubble's ring reader).
    `flows`: messages, or anything `flow_of` makes one of (parsed only when needed)."""
    since = request.since.ToNanoseconds() if request.HasField("since") else None
    until = request.until.ToNanoseconds() if request.HasField("until") else None
    number = request.number
    if request.follow and number == 0 and since is None:
        return []  # follow only: no need to look back
    if filters.empty and since is None:
        matched = list(flows)
    else:
        matched = [f for f in flows if filters.matches(flow_of(f))
                   and (since is None or flow_of(f).time.ToNanoseconds() >= since)]
    if since is None and not request.first and number:
        matched = matched[-number:]  # rewound by `number` matching flows, as Hubble (not by `until`)
    elif number and not request.follow:
        matched = matched[:number]  # forward from `since` or the oldest; a follower is not capped
    if until is not None:  # reading forward stops at the first flow past `until`
        for i, f in enumerate(matched):
            if flow_of(f).time.ToNanoseconds() > until:
                return matched[:i]
    return matched


class FollowBudget:
    """A follower's share of one core (`--hubble-follow-cpu-budget`): the CPU its loop thread
    spends serving (thread time: waiting for a slow client or for the GIL costs nothing) is paid
    from an allowance that grows by `fraction` of the wall time passing (at most a second's worth
    banked); a batch stops when it is spent, and the rest is counted lost."""

    def __init__(self, fraction: float, wall: Callable[[], float] = time.perf_counter,
                 cpu: Callable[[], float] = time.thread_time) -> None:
        self.fraction = fraction
        self._wall = wall
        self._cpu = cpu
        self._last = wall()
        self._allowance = 0.0
        self._started = cpu()

    def start(self) -> None:
        now = self._wall()
        self._allowance = min(self._allowance + (now - self._last) * self.fraction, self.fraction)
        self._last = now
        self._started = self._cpu()

    def spent(self) -> bool:
        return self._cpu() - self._started >= self._allowance

    def stop(self) -> None:
        self._allowance -= self._cpu() - self._started


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
                       context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        """Yields serialized GetFlowsResponses (the method's serializer passes bytes through)."""
        batches = self.flow_batches(request, context)
        try:
            async for batch in batches:
                for data in batch:
                    yield data
        finally:
            await batches.aclose()  # the follower unsubscribes now, not when collected

    async def flow_batches(self, request: observer_pb2.GetFlowsRequest,
                           context: grpc.aio.ServicerContext[Any, Any]) -> AsyncGenerator[list[bytes], None]:
        """GetFlows' responses (serialized) in batches: the history in slices, then what each batch of
        new entries gave (cilia's own gRPC server frames a batch at once, cilia.hubble.h2conn)."""
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
        parse = until is not None or not filters.empty  # else bytes go out unparsed
        masked = _Masker(mask) if mask is not None else None
        source = self._source
        ring = source.ring
        subscriber: EntrySubscriber | None = None
        # follow only (no number, no since): no history, new flows from the request on
        follow_only = request.follow and request.number == 0 and not request.HasField("since")
        start_seq = ring.sequence
        if request.follow:
            # Subscribed before the history is read, so nothing falls between the two; what is
            # in both is skipped by sequence number below. Entries come unbuilt: this thread
            # encodes them.
            subscriber = EntrySubscriber(asyncio.get_running_loop(), size=FOLLOW_QUEUE)
            ring.subscribe_entries(subscriber)
        try:
            pending: list[FlowEntry] | None = None
            pending_upto = 0
            if follow_only:
                # what came between reading the sequence and subscribing is served as followed
                # flows (filters, budget and all), then skipped when the subscriber has it too
                last_seq, pending, _missed = ring.since(start_seq)
                pending_upto, last_seq = last_seq, start_seq
            else:
                if filters.empty and not request.HasField("since") and not request.HasField("until"):
                    # select_history looks at no flow: the bytes go as they are, no Served each
                    raw, last_seq = await asyncio.to_thread(source.history_data)
                    chosen = select_history(raw, request, filters)
                    del raw
                else:
                    history, last_seq = await asyncio.to_thread(source.history)
                    chosen = [item.data for item in select_history(history, request, filters, Served.flow)]
                    del history
                for first in range(0, len(chosen), HISTORY_BATCH):
                    batch = chosen[first:first + HISTORY_BATCH]
                    yield batch if masked is None else [masked(item) for item in batch]
                del chosen
            if subscriber is None:
                return
            lost, datapath_lost = 0, ring.events_lost
            node = self._config.node
            budget = FollowBudget(self._config.follow_budget) if self._config.follow_budget else None
            over_budget = 0  # flows this follower's CPU budget had no room for (reported as lost)
            out: list[bytes] = []
            while True:
                if pending is not None:
                    entries, pending = pending, None
                else:
                    entries = await subscriber.batch()
                if budget is None and not parse and masked is None:
                    # the common follower (`hubble observe -f`: no filter, mask or budget): the
                    # batch encoded at once, sent after what was lost before it
                    fresh = [entry for entry in entries if entry.seq > last_seq]  # not sent with the history
                    if fresh:
                        if subscriber.lost > lost:
                            out.append(_lost(flow_pb2.HUBBLE_RING_BUFFER, subscriber.lost - lost, node)
                                       .SerializeToString())
                            lost = subscriber.lost
                        if ring.events_lost > datapath_lost:
                            out.append(_lost(flow_pb2.PERF_EVENT_RING_BUFFER, ring.events_lost - datapath_lost,
                                             node).SerializeToString())
                            datapath_lost = ring.events_lost
                        out.extend([data for data in source.wire_many(fresh) if data])
                else:
                    if budget is not None:
                        budget.start()
                        wires = None  # encoded one at a time: the budget may stop the batch anywhere
                    else:
                        wires = source.wire_many(entries)
                    for index, entry in enumerate(entries):
                        if budget is not None and budget.spent():
                            over_budget += sum(1 for e in entries[index:] if e.seq > last_seq)
                            if subscriber.lost + over_budget > lost:  # told now: nothing else may come soon
                                out.append(_lost(flow_pb2.HUBBLE_RING_BUFFER, subscriber.lost + over_budget - lost,
                                                 node).SerializeToString())
                                lost = subscriber.lost + over_budget
                            break
                        if entry.seq <= last_seq:
                            continue  # sent with the history
                        if subscriber.lost + over_budget > lost:
                            out.append(_lost(flow_pb2.HUBBLE_RING_BUFFER, subscriber.lost + over_budget - lost,
                                             node).SerializeToString())
                            lost = subscriber.lost + over_budget
                        if ring.events_lost > datapath_lost:
                            out.append(_lost(flow_pb2.PERF_EVENT_RING_BUFFER, ring.events_lost - datapath_lost,
                                             node).SerializeToString())
                            datapath_lost = ring.events_lost
                        data = wires[index] if wires is not None else source.wire(entry)
                        if not data:
                            continue
                        if parse:
                            new = Served(data).flow()
                            if until is not None and new.time.ToNanoseconds() > until:
                                if out:
                                    yield out
                                return
                            if not filters.matches(new):
                                continue
                        out.append(data if masked is None else masked(data))
                if budget is not None:
                    budget.stop()
                if follow_only and last_seq < pending_upto:
                    last_seq = pending_upto  # the raced entries are done: the subscriber's copies are not sent
                if out:
                    yield out
                    out = []
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


class _Masker:
    """A request's field mask on GetFlowsResponse bytes: on the wire (cilia.hubble.wire.WireMask,
    what protobuf's FieldMask.MergeMessage gives, ~1.3-1.5x cheaper), protobuf's own way as fallback."""

    def __init__(self, mask: Any) -> None:
        self._mask = mask
        self._wire = WireMask(list(mask.paths))

    def __call__(self, data: bytes) -> bytes:
        try:
            return self._wire.apply(data)
        except (ValueError, IndexError, KeyError):
            flow = observer_pb2.GetFlowsResponse.FromString(data).flow
            return _response(flow, self._mask).SerializeToString()


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
        loop = uvloop.new_event_loop() if self.config.server_impl == "h2" else asyncio.new_event_loop()
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

    async def _services(self, server: Any) -> None:
        """Every service this server offers, registered on `server` (a grpc.aio.Server or a MethodTable)."""
        config = self.config
        observer = ObserverService(self.source, config, events=self.events, namespaces=self.namespaces)
        add_observer(observer, server)
        if isinstance(server, MethodTable):  # GetFlows in batches: framed a batch at a time
            server.add_batched("/observer.Observer/GetFlows", observer.flow_batches,
                               observer_pb2.GetFlowsRequest.FromString)
        peer_pb2_grpc.add_PeerServicer_to_server(PeerService(self.peers), server)  # type: ignore[no-untyped-call]
        health = health_aio.HealthServicer()
        for service in ("", HEALTH_SERVICE):
            await health.set(service, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)

    async def _serve(self) -> None:
        config = self.config
        config.socket.parent.mkdir(parents=True, exist_ok=True)
        config.socket.unlink(missing_ok=True)
        stop: Callable[[float], Any]
        if config.server_impl == "grpcio":
            server = grpc.aio.server()
            await self._services(server)
            server.add_insecure_port(f"unix://{config.socket}")
            if config.listen_address:
                if config.tls is not None:
                    self.tcp_port = server.add_secure_port(config.listen_address, server_credentials(config.tls))
                else:
                    self.tcp_port = server.add_insecure_port(config.listen_address)
            await server.start()
            stop = server.stop
        else:
            methods = MethodTable()
            await self._services(methods)
            own = GrpcServer(methods)
            await own.add_unix(config.socket)
            if config.listen_address:
                tls = tls_context(config.tls.cert, config.tls.key, config.tls.client_cas) \
                    if config.tls is not None else None
                self.tcp_port = await own.add_tcp(config.listen_address, tls)
            stop = own.stop
        os.chmod(config.socket, 0o600)  # flows name every pod's peers: root only, like agent.sock
        log.info("hubble server (%s) on unix://%s%s", config.server_impl, config.socket,
                 f" and {config.listen_address} ({'TLS' if config.tls else 'plaintext'})"
                 if config.listen_address else "")
        self._stopping = asyncio.Event()
        self._ready.set()
        await self._stopping.wait()
        await stop(self._grace)

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


def _as_is(data: bytes) -> bytes:
    return data


def add_observer(service: ObserverService, server: grpc.aio.Server | MethodTable) -> None:
    """observer.Observer's methods, as the generated add_ObserverServicer_to_server registers
    them, except that GetFlows' responses come serialized already."""
    m = observer_pb2
    stream, unary = grpc.unary_stream_rpc_method_handler, grpc.unary_unary_rpc_method_handler
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "GetFlows": stream(service.GetFlows, request_deserializer=m.GetFlowsRequest.FromString,
                           response_serializer=_as_is),
        "GetAgentEvents": stream(service.GetAgentEvents, request_deserializer=m.GetAgentEventsRequest.FromString,
                                 response_serializer=m.GetAgentEventsResponse.SerializeToString),
        "GetDebugEvents": stream(service.GetDebugEvents, request_deserializer=m.GetDebugEventsRequest.FromString,
                                 response_serializer=m.GetDebugEventsResponse.SerializeToString),
        "GetNodes": unary(service.GetNodes, request_deserializer=m.GetNodesRequest.FromString,
                          response_serializer=m.GetNodesResponse.SerializeToString),
        "GetNamespaces": unary(service.GetNamespaces, request_deserializer=m.GetNamespacesRequest.FromString,
                               response_serializer=m.GetNamespacesResponse.SerializeToString),
        "ServerStatus": unary(service.ServerStatus, request_deserializer=m.ServerStatusRequest.FromString,
                              response_serializer=m.ServerStatusResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("observer.Observer", handlers),))
    server.add_registered_method_handlers("observer.Observer", handlers)


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """The TLS (with client CAs: mutual TLS) credentials of a Hubble server, the agent's or the relay's."""
    pair = [(tls.key.read_bytes(), tls.cert.read_bytes())]
    if not tls.client_cas:
        return grpc.ssl_server_credentials(pair)
    roots = b"".join(path.read_bytes() for path in tls.client_cas)
    return grpc.ssl_server_credentials(pair, root_certificates=roots, require_client_auth=True)
