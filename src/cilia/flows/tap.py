"""A background reader of the flow ring for consumers that must see every flow (Hubble metrics,
the flow exporter) without running on the event pump's thread.

Every `interval` seconds the tap takes the entries added since its last pass, builds each flow
once (kept in the ring, so readers after it do not build it again) and hands it to each consumer,
then calls each consumer's `flush`. Work per pass is bounded twice: by the ring's capacity
(entries overwritten before a pass reached them are counted in `missed` and reported to each
consumer's `missed`, never waited for) and by a CPU budget (`budget`, a fraction of one core:
a pass stops building after `budget * interval` seconds and counts the rest as missed), so under
a flood the tap samples the newest flows instead of taking the workloads' CPU."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

from cilia.flows.build import Flow
from cilia.flows.ring import FlowEntry, FlowRing
from cilia.flows.shape import Shape

log = logging.getLogger(__name__)
DEFAULT_INTERVAL = 0.25
DEFAULT_BUDGET = 0.2  # of one core: ~3,000 flows/s at ~70 µs a flow; beyond that the tap samples


class FlowConsumer(Protocol):
    def consume(self, flow: Flow) -> None: ...

    def flush(self) -> None: ...

    def missed(self, count: int) -> None: ...


class ShapeConsumer(FlowConsumer, Protocol):
    """A consumer that can also take `count` flows of one shape at once (cilia.flows.shape):
    `entry` is one of them (built by the consumer only if it has nothing for the shape yet).
    Only for a consumer that reads nothing a shape leaves open (ports, time, uuid, lengths),
    which says so with `takes_shapes`; a tap whose consumers all do hands them each pass's
    records grouped by shape."""

    @property
    def takes_shapes(self) -> bool: ...

    def consume_shape(self, shape: Shape, entry: FlowEntry, count: int) -> None: ...


class FlowTap:
    def __init__(self, ring: FlowRing, consumers: list[FlowConsumer], interval: float = DEFAULT_INTERVAL,
                 name: str = "flow-tap", budget: float | None = DEFAULT_BUDGET) -> None:
        self.ring = ring
        self.consumers = consumers
        self.interval = interval
        self.budget = budget  # None: no limit (tests, an exporter that must see everything)
        self.name = name
        self._cursor = ring.sequence  # flows from before the start are not replayed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0
        self.flows = 0
        self.missed = 0
        self.busy_seconds = 0.0  # time spent in passes: the tap's CPU cost, for benchmarks
        self._lock = threading.Lock()  # a pass at a time (the thread, or a caller's step())
        # every consumer takes shapes: flows of a shape are counted, not built (cilia.flows.shape)
        self._by_shape = bool(consumers) and all(getattr(c, "takes_shapes", False) for c in consumers)

    def step(self) -> int:
        """One pass; how many flows it handed on."""
        with self._lock:
            started = time.perf_counter()
            self._cursor, entries, missed = self.ring.since(self._cursor)
            deadline = started + self.budget * self.interval if self.budget is not None else None
            if self._by_shape:
                count, skipped = self._shaped(entries, deadline)
            else:
                count, skipped = self._flows(entries, deadline)
            missed += skipped
            if missed:
                self.missed += missed
                for consumer in self.consumers:
                    consumer.missed(missed)
            for consumer in self.consumers:
                consumer.flush()
            self.passes += 1
            self.flows += count
            self.busy_seconds += time.perf_counter() - started
            return count

    def _flows(self, entries: list[FlowEntry], deadline: float | None) -> tuple[int, int]:
        """Each entry's flow to every consumer: (flows handed on, entries skipped over budget)."""
        count = 0
        for index, entry in enumerate(entries):
            if deadline is not None and index % 64 == 0 and time.perf_counter() > deadline:
                # over budget: the oldest are done, the rest of this pass is skipped (counted)
                return count, len(entries) - index
            flow = entry.get()
            if flow is None:
                continue
            count += 1
            for consumer in self.consumers:
                consumer.consume(flow)
        return count, 0

    def _shaped(self, entries: list[FlowEntry], deadline: float | None) -> tuple[int, int]:
        """The same for consumers that take shapes: the entries grouped by shape key (no lookup,
        no flow built), each group's lookups made once and handed on with its size; an entry
        without a shape goes as a flow. Groups go in the order their first entries came, so a
        consumer meets each flow's outcome (a new series, say) in the order the flows would give."""
        groups: dict[object, list[Any]] = {}  # (context, key), or the entry -> [first entry, count]
        skipped = 0
        for index, entry in enumerate(entries):
            if deadline is not None and index % 64 == 0 and time.perf_counter() > deadline:
                skipped = len(entries) - index
                break
            key = entry.shape_key()
            group = groups.get(key if key is not None else entry)
            if group is None:
                groups[key if key is not None else entry] = [entry, 1]
            else:
                group[1] += 1
        count = 0
        consumers = cast(list[ShapeConsumer], self.consumers)
        for number, (group_key, (entry, size)) in enumerate(groups.items()):
            if deadline is not None and number % 16 == 0 and time.perf_counter() > deadline:
                # over budget with shapes to build (a flood of new ones): the rest are skipped
                skipped += sum(size for _entry, size in list(groups.values())[number:])
                break
            shape = entry.shape() if group_key is not entry else None
            # no shape after all: the group's flows as flows (one; or alike in all these consumers read)
            if shape is None:
                flow = entry.get()
                if flow is None:
                    continue
                for consumer in consumers:
                    for _ in range(size):
                        consumer.consume(flow)
            else:
                for consumer in consumers:
                    consumer.consume_shape(shape, entry, size)
            count += size
        return count, skipped

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
