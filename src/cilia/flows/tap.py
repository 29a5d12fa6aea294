"""A background reader of the flow ring for consumers that must see every flow (Hubble metrics,
the flow exporter) without running on the event pump's thread.

Every `interval` seconds the tap takes the entries added since its last pass, builds each flow
once (kept in the ring, so readers after it do not build it again) and hands it to each consumer,
then calls each consumer's `flush`. Work per pass is bounded by the ring's capacity: entries
overwritten before a pass reached them are counted in `missed` (and passed to `on_missed`), never
waited for, so the tap can fall behind but cannot slow the pump down."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from cilia.flows.build import Flow
from cilia.flows.ring import FlowRing

log = logging.getLogger(__name__)
DEFAULT_INTERVAL = 0.25


class FlowConsumer(Protocol):
    def consume(self, flow: Flow) -> None: ...

    def flush(self) -> None: ...

    def missed(self, count: int) -> None: ...


class FlowTap:
    def __init__(self, ring: FlowRing, consumers: list[FlowConsumer], interval: float = DEFAULT_INTERVAL,
                 name: str = "flow-tap") -> None:
        self.ring = ring
        self.consumers = consumers
        self.interval = interval
        self.name = name
        self._cursor = ring.sequence  # flows from before the start are not replayed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0
        self.flows = 0
        self.missed = 0
        self.busy_seconds = 0.0  # time spent in passes: the tap's CPU cost, for benchmarks
        self._lock = threading.Lock()  # a pass at a time (the thread, or a caller's step())

    def step(self) -> int:
        """One pass; how many flows it handed on."""
        with self._lock:
            started = time.perf_counter()
            self._cursor, entries, missed = self.ring.since(self._cursor)
            if missed:
                self.missed += missed
                for consumer in self.consumers:
                    consumer.missed(missed)
            count = 0
            for entry in entries:
                flow = entry.get()
                if flow is None:
                    continue
                count += 1
                for consumer in self.consumers:
                    consumer.consume(flow)
            for consumer in self.consumers:
                consumer.flush()
            self.passes += 1
            self.flows += count
            self.busy_seconds += time.perf_counter() - started
            return count

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.step()
            except Exception:  # one bad flow or a full disk must not end the tap for good
                log.exception("%s: a pass failed", self.name)
        try:
            self.step()  # what arrived since the last pass (an exporter's last lines)
        except Exception:
            log.exception("%s: the last pass failed", self.name)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


Callback = Callable[[Flow], None]
