"""The event pump: a thread drains the datapath's ring buffer into flows in the flow ring."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from cilia.agent.config import AgentConfig
from cilia.agent.datapath_adapter import DatapathAdapter
from cilia.agent.endpoint_manager import EndpointManager
from cilia.bpf import RingBufferReader
from cilia.flows.build import EndpointView, FlowBuilder, RuleLookup
from cilia.flows.ring import FlowRing
from cilia.identity.allocator import LocalIdentityAllocator
from cilia.monitor.events import DecodeError, decode

log = logging.getLogger(__name__)


class EventPump:
    def __init__(
        self,
        config: AgentConfig,
        datapath: DatapathAdapter,
        endpoints: EndpointManager,
        identities: LocalIdentityAllocator,
        rules: RuleLookup | None = None,
    ) -> None:
        self.ring = FlowRing(config.flow_buffer)
        self.raw = FlowRing(1024)  # decoded events as they came, for `cilia monitor`
        self._datapath = datapath
        self._endpoints = endpoints
        self._identities = identities
        self._views: dict[str, EndpointView] = {}
        endpoints.subscribe(self._refresh_views)
        boot_offset = time.time_ns() - time.monotonic_ns()
        self.builder = FlowBuilder(config.node, self._views.get, self._identity_labels, boot_offset,
                                   rules or (lambda _rule_id: None))
        self._stop = threading.Event()
        self.decode_errors = 0

    def _refresh_views(self) -> None:
        views: dict[str, EndpointView] = {}
        for record in self._endpoints.records():
            view = EndpointView(record.id, record.identity, record.pod_namespace, record.pod_name,
                                list(record.identity_labels))
            for address in (record.ipv4, record.ipv6):
                if address:
                    views[address] = view
        self._views.clear()
        self._views.update(views)

    def _identity_labels(self, identity_id: int) -> list[str]:
        identity = self._identities.lookup_by_id(identity_id)
        return [str(label) for label in identity.labels] if identity else []

    def _on_record(self, record: bytes) -> None:
        try:
            event = decode(record)
        except DecodeError:
            self.decode_errors += 1
            return
        self.raw.add(event.to_dict())
        self.ring.add(self.builder.build(event))

    def _run_blocking(self) -> None:
        reader = RingBufferReader(self._datapath.datapath.events_map, self._on_record)
        try:
            while not self._stop.is_set():
                reader.poll(200)
                self.ring.events_lost = self._datapath.datapath.events_lost()
        finally:
            reader.close()

    async def run(self) -> None:
        self._refresh_views()
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
