"""The event pump: a thread drains the datapath's ring buffer into the flow ring.

Flows are built when they are read (`cilia observe`) or followed, not when they arrive: decoding
and enriching an event costs ~60 µs of Python, and at 10,000 new connections a second (about five
events each) that would take a whole core from the workloads. Records go into the ring raw, a
drain's worth at a time (one lock a batch, ~1 µs a record), each with the context it arrived in:
the endpoint views current then, so a flow read later still names a pod deleted since. The same
context encodes a record straight to Hubble's wire format (cilia.hubble.wire) for the Hubble
server, with the same lookups the flow dict would get."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time

from cilia.agent.config import AgentConfig
from cilia.agent.datapath_adapter import DatapathAdapter
from cilia.bpf import RingBufferReader
from cilia.endpoint.manager import EndpointManager
from cilia.flows.build import EndpointView, Flow, FlowBuilder, NameLookup, RuleLookup, ServiceLookup
from cilia.flows.ring import FlowRing, RecordRing
from cilia.flows.shape import Shape
from cilia.hubble.wire import WireEncoder, shape_key
from cilia.identity.allocator import IdentityAllocator
from cilia.monitor.events import EVENT_SOCK, DecodeError, decode, decode_sock, event_type
from cilia.netlink.netns import netns_cookie

log = logging.getLogger(__name__)
BATCH_INTERVAL = 0.02  # seconds between two reads of a busy ring buffer


class _Context:
    """The records of a batch and the endpoint views they arrived with (a RecordContext)."""

    __slots__ = ("_netns", "_pump", "_views")

    def __init__(self, pump: EventPump, views: dict[str, EndpointView], netns: dict[int, EndpointView]) -> None:
        self._pump = pump
        self._views = views
        self._netns = netns

    def build(self, record: bytes, flow_id: str) -> Flow | None:
        return self._pump._flow(record, self._views, self._netns, flow_id)

    def encode(self, record: bytes, flow_id: str) -> bytes | None:
        if event_type(record) == EVENT_SOCK:
            return None
        return self._pump.encoder.encode(record, flow_id, self._views.get)

    def encode_many(self, records: list[bytes], flow_ids: list[str]) -> list[bytes | None]:
        return self._pump.encoder.encode_many(records, flow_ids, self._views.get)  # None for a sock event

    shape_key = staticmethod(shape_key)  # flows by shape, for the metrics' tap (cilia.flows.shape)

    def shape(self, record: bytes) -> Shape | None:
        return self._pump.encoder.shape(record, self._views.get)


class _RawContext:
    """The raw ring's: decoded events, for `cilia monitor`."""

    def build(self, record: bytes, flow_id: str) -> Flow | None:
        return EventPump._event(record)

    def encode(self, record: bytes, flow_id: str) -> bytes | None:
        return None


class EventPump:
    def __init__(
        self,
        config: AgentConfig,
        datapath: DatapathAdapter,
        endpoints: EndpointManager,
        identities: IdentityAllocator,
        rules: RuleLookup | None = None,
        services: ServiceLookup | None = None,
        names: NameLookup | None = None,
    ) -> None:
        self.ring = FlowRing(config.flow_buffer)
        # decoded events as they came, for `cilia monitor`: records kept raw, entries made on read
        self.raw = RecordRing(1024)
        self._datapath = datapath
        self._endpoints = endpoints
        self._identities = identities
        # Replaced (never changed in place) on every endpoint change: records hold the one they came with.
        self._views: dict[str, EndpointView] = {}
        self._netns_views: dict[int, EndpointView] = {}  # netns cookie -> endpoint (socket-path flows)
        self._cookies: dict[str, int | None] = {}  # netns path -> cookie, read once per endpoint
        endpoints.subscribe(self._refresh_views)
        boot_offset = time.time_ns() - time.monotonic_ns()
        self.builder = FlowBuilder(config.node, lambda _ip: None, self._identity_labels, boot_offset,
                                   rules or (lambda _rule_id: None), services, names=names)
        self.encoder = WireEncoder(config.node, self._identity_labels, boot_offset, rules, services, names)
        self._context = _Context(self, self._views, self._netns_views)
        self._raw_context = _RawContext()
        self._stop = threading.Event()
        self.decode_errors = 0

    def _refresh_views(self) -> None:
        views: dict[str, EndpointView] = {}
        by_netns: dict[int, EndpointView] = {}
        records = self._endpoints.records()
        for record in records:
            view = EndpointView(record.id, record.identity, record.pod_namespace, record.pod_name,
                                list(record.identity_labels))
            for address in (record.ipv4, record.ipv6):
                if address:
                    views[address] = view
            if record.netns and record.netns not in self._cookies:
                self._cookies[record.netns] = netns_cookie(record.netns)
            cookie = self._cookies.get(record.netns)
            if cookie is not None:
                by_netns[cookie] = view
        for path in set(self._cookies) - {r.netns for r in records}:
            del self._cookies[path]
        self._views = views
        self._netns_views = by_netns
        self._context = _Context(self, views, by_netns)

    def _identity_labels(self, identity_id: int) -> list[str]:
        identity = self._identities.lookup_by_id(identity_id)
        return [str(label) for label in identity.labels] if identity else []

    def _on_records(self, records: list[bytes]) -> None:
        """Called for every drain of the ring buffer: keep the records, cheaply; decode and
        enrich only on demand."""
        self.ring.add_records(records, self._context)
        self.raw.add_records(records, self._raw_context)

    def _flow(self, record: bytes, views: dict[str, EndpointView], netns: dict[int, EndpointView],
              flow_id: str | None = None) -> Flow | None:
        try:
            if event_type(record) == EVENT_SOCK:
                return self.builder.build_sock(decode_sock(record), views.get, netns.get, flow_id)
            return self.builder.build(decode(record), views.get, flow_id)
        except DecodeError:
            self.decode_errors += 1
            return None

    @staticmethod
    def _event(record: bytes) -> dict[str, object] | None:
        try:
            return decode_sock(record).to_dict() if event_type(record) == EVENT_SOCK else decode(record).to_dict()
        except DecodeError:
            return None

    def _run_blocking(self) -> None:
        reader = RingBufferReader(self._datapath.datapath.events_map, on_batch=self._on_records)
        try:
            while not self._stop.is_set():
                if reader.poll(200):
                    # Read in batches: the datapath wakes a reader that has caught up for every
                    # event, and a wakeup per event would cost more than the event. While we are
                    # behind it does not wake us; 20 ms of events fit the ring many times over.
                    self._stop.wait(BATCH_INTERVAL)
                self.ring.events_lost = self._datapath.datapath.events_lost()
        finally:
            reader.close()

    async def run(self) -> None:
        self._refresh_views()
        # The agent has started (the daemon starts the pump last): what it allocated so far lives
        # on, and is moved out of the cyclic collector's reach. Under a flood the pump and the
        # Hubble server make ~100,000 short-lived tracked objects a second (flow entries, their
        # lists), and every full collection those trigger would otherwise scan the whole heap of
        # the agent again: a fifth of the agent's time at 50,000 events/s (py-spy --gil). Cyclic
        # garbage among the frozen objects is not collected: they are the agent's lasting state.
        gc.freeze()
        try:
            await asyncio.to_thread(self._run_blocking)
        except asyncio.CancelledError:
            self._stop.set()
            raise

    def close(self) -> None:
        self._stop.set()

    def flows_buffered(self) -> int:
        return len(self.ring)

    def events_lost(self) -> int:
        return self.ring.events_lost

    def endpoint_view(self, ip: str) -> EndpointView | None:
        """The local endpoint at this address now (the access log's L7 flows)."""
        return self._views.get(ip)

    def identity_labels(self, identity_id: int) -> list[str]:
        return self._identity_labels(identity_id)
