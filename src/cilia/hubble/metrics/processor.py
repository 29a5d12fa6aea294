"""Hubble's flow metrics as a Prometheus collector, fed off the event pump's thread.

The event pump only appends lazy records to the ring (decoding costs ~20 µs a flow); a
`cilia.flows.tap.FlowTap` hands every flow to `FlowMetrics.consume` in a background pass and
says how many the ring overwrote before a pass reached them
(`hubble_lost_events_total{source="hubble_ring_buffer"}`).

Cardinality stays bounded: a series naming a pod (a `pod`/`pod-name` context, or labelsContext
with `*_namespace` and `*_pod`) is removed `pod_grace` seconds after that pod's endpoint is gone
(Hubble: one minute, so a last scrape still sees the final count), and at most `max_series`
series exist; flows that would add more are counted in `cilia_hubble_metrics_series_overflow_total`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from cilia.hubble.metrics.context import LabelContext, Pod
from cilia.hubble.metrics.handlers import HANDLERS, Handler
from cilia.hubble.metrics.options import MetricSpec

DEFAULT_POD_GRACE = 60.0
DEFAULT_MAX_SERIES = 50_000
SeriesKey = tuple[int, tuple[str, ...]]  # (metric index, label values)


class FlowMetrics(Collector):
    """The enabled Hubble metrics; a prometheus Collector (register it on the agent's registry)."""

    def __init__(self, specs: Iterable[MetricSpec], *, max_series: int = DEFAULT_MAX_SERIES,
                 pod_grace: float = DEFAULT_POD_GRACE, clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics: list[tuple[Handler, LabelContext]] = [
            (HANDLERS[spec.name](), LabelContext(spec.context)) for spec in specs]
        self._counts: dict[SeriesKey, float] = {}
        self._by_pod: dict[Pod, set[SeriesKey]] = {}
        self._lock = threading.Lock()
        self._max_series = max_series
        self._pod_grace = pod_grace
        self._clock = clock
        self._pods: set[Pod] = set()
        self._deleted: dict[Pod, float] = {}  # pod -> when its series go
        self.overflow = 0
        self.ring_lost = 0
        self.datapath_lost: Callable[[], int] = lambda: 0

    # ----- counting ------------------------------------------------------------------------------
    def process(self, flow: Mapping[str, Any]) -> None:
        with self._lock:
            for index, (handler, context) in enumerate(self.metrics):
                series = handler.series(flow)
                if not series:
                    continue
                values, pods = context.values(flow) if context.names else ((), frozenset())
                for labels in series:
                    key = (index, labels + values)
                    if key not in self._counts:
                        if len(self._counts) >= self._max_series:
                            self.overflow += 1
                            continue
                        self._counts[key] = 0.0
                        for pod in pods:
                            self._by_pod.setdefault(pod, set()).add(key)
                    self._counts[key] += 1

    # ----- cilia.flows.tap.FlowConsumer -----------------------------------------------------------
    def consume(self, flow: Mapping[str, Any]) -> None:
        self.process(flow)

    def flush(self) -> None:
        self.expire()

    def missed(self, count: int) -> None:
        self.ring_lost += count

    def series_count(self) -> int:
        return len(self._counts)

    # ----- pods ----------------------------------------------------------------------------------
    def set_pods(self, pods: Iterable[Pod]) -> None:
        """The node's current pods: those gone since the last call lose their series after the
        grace period (unless they come back first)."""
        current = set(pods)
        now = self._clock()
        with self._lock:
            for pod in self._pods - current:
                self._deleted[pod] = now + self._pod_grace
            for pod in current:
                self._deleted.pop(pod, None)
            self._pods = current

    def expire(self) -> int:
        """Remove the series of pods deleted more than the grace period ago; how many went."""
        now = self._clock()
        removed = 0
        with self._lock:
            for pod, when in list(self._deleted.items()):
                if when > now:
                    continue
                del self._deleted[pod]
                for key in self._by_pod.pop(pod, set()):
                    if self._counts.pop(key, None) is not None:
                        removed += 1
                    for other in self._by_pod.values():  # a series may name two pods
                        other.discard(key)
        return removed

    # ----- Prometheus ----------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts = dict(self._counts)
        families = [CounterMetricFamily(handler.metric, handler.help, labels=[*handler.labels, *context.names])
                    for handler, context in self.metrics]
        for (index, labels), value in sorted(counts.items()):
            families[index].add_metric(list(labels), value)
        yield from families
        if self.metrics:  # Hubble: lost events are served whenever any metric is
            lost = CounterMetricFamily("hubble_lost_events", "Number of lost events", labels=["source"])
            lost.add_metric(["perf_event_ring_buffer"], self.datapath_lost())
            lost.add_metric(["hubble_ring_buffer"], self.ring_lost)
            yield lost
            yield CounterMetricFamily("cilia_hubble_metrics_series_overflow",
                                      "Flows not counted because the Hubble metrics reached their series limit",
                                      value=self.overflow)
