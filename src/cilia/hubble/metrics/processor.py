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
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, cast

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from cilia.flows.ring import FlowEntry
from cilia.flows.shape import Shape, ShapeCache
from cilia.hubble.metrics.context import LabelContext, Pod
from cilia.hubble.metrics.families import Family, MultiHandler, Sample
from cilia.hubble.metrics.handlers import HANDLERS, SHAPE_HANDLERS, Handler
from cilia.hubble.metrics.options import MetricSpec

DEFAULT_POD_GRACE = 60.0
DEFAULT_MAX_SERIES = 50_000
SeriesKey = tuple[int, tuple[str, ...]]  # (family index, label values)
Increment = tuple[SeriesKey, float, frozenset[Pod]]  # a series, the value a flow adds, the pods it names


class _Metric:
    """One enabled metric: its handler's families (at `offset` in the processor's list), the
    label context, and how a flow becomes samples."""

    def __init__(self, handler: Handler | MultiHandler, spec: MetricSpec, offset: int) -> None:
        self.offset = offset
        self.context = LabelContext(spec.context)
        self.invert = False
        if hasattr(handler, "families"):  # a MultiHandler (several families or a histogram)
            multi = cast(MultiHandler, handler).configure(spec.flags)
            self.families = multi.families
            self.invert = multi.invert_context
            self.samples = multi.samples
        else:
            plain = handler
            self.families = (Family(plain.metric, plain.help, plain.labels),)
            self.samples = lambda flow: [(0, labels, 1.0) for labels in plain.series(flow)]


def _swapped(flow: Mapping[str, Any]) -> Mapping[str, Any]:
    """A flow with its two sides exchanged (httpV2 labels a response by its request's sides)."""
    ip = flow.get("IP") or {}
    return {**flow, "source": flow.get("destination") or {}, "destination": flow.get("source") or {},
            "IP": {**ip, "source": ip.get("destination", ""), "destination": ip.get("source", "")},
            "source_names": flow.get("destination_names") or [], "destination_names": flow.get("source_names") or []}


class FlowMetrics(Collector):
    """The enabled Hubble metrics; a prometheus Collector (register it on the agent's registry)."""

    def __init__(self, specs: Iterable[MetricSpec], *, max_series: int = DEFAULT_MAX_SERIES,
                 pod_grace: float = DEFAULT_POD_GRACE, clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics: list[_Metric] = []
        self.families: list[Family] = []
        handlers = []
        for spec in specs:
            handlers.append(HANDLERS[spec.name]())
            metric = _Metric(handlers[-1], spec, len(self.families))
            self.metrics.append(metric)
            self.families.extend(metric.families)
        self._counts: dict[SeriesKey, float] = {}
        # histogram series: per-bucket counts (not cumulative), then the sum
        self._histograms: dict[SeriesKey, list[float]] = {}
        self._by_pod: dict[Pod, set[SeriesKey]] = {}
        self._lock = threading.Lock()
        self._max_series = max_series
        self._pod_grace = pod_grace
        self._clock = clock
        self._pods: set[Pod] = set()
        self._deleted: dict[Pod, float] = {}  # pod -> when its series go
        self.overflow = 0
        # by shape when every metric's series are fixed by a record's shape (not ports, not L7)
        self._by_shape: ShapeCache[list[Increment]] | None = ShapeCache(self._increments) \
            if all(type(handler) in SHAPE_HANDLERS for handler in handlers) else None
        self.ring_lost = 0
        self.datapath_lost: Callable[[], int] = lambda: 0

    # ----- counting ------------------------------------------------------------------------------
    def process(self, flow: Mapping[str, Any]) -> None:
        self._count(self._increments(flow), 1)

    def _increments(self, flow: Mapping[str, Any]) -> list[Increment]:
        """The series the flow adds to: (key, value, the pods the series names), in order."""
        out: list[Increment] = []
        for metric in self.metrics:
            samples: list[Sample] = metric.samples(flow)
            if not samples:
                continue
            context = metric.context
            if context.names:
                values, pods = context.values(_swapped(flow) if metric.invert else flow)
            else:
                values, pods = (), frozenset()
            for family_index, labels, value in samples:
                out.append(((metric.offset + family_index, labels + values), value, pods))
        return out

    def _count(self, increments: list[Increment], times: int) -> None:
        """`times` flows that each add `increments` (a counter's value is 1 a flow)."""
        with self._lock:
            for key, value, pods in increments:
                buckets = self.families[key[0]].buckets
                if key not in self._counts and key not in self._histograms:
                    if len(self._counts) + len(self._histograms) >= self._max_series:
                        self.overflow += times  # the series is not made for the later ones either
                        continue
                    if buckets:
                        self._histograms[key] = [0.0] * (len(buckets) + 2)
                    else:
                        self._counts[key] = 0.0
                    for pod in pods:
                        self._by_pod.setdefault(pod, set()).add(key)
                if buckets:
                    series = self._histograms[key]
                    series[bisect_left(buckets, value)] += times  # le: the first bound >= value
                    series[-1] += value * times
                else:
                    self._counts[key] += times

    # ----- cilia.flows.tap.FlowConsumer -----------------------------------------------------------
    def consume(self, flow: Mapping[str, Any]) -> None:
        self.process(flow)

    @property
    def takes_shapes(self) -> bool:
        """Whether every enabled metric's series are fixed by a record's shape (cilia.flows.shape:
        not by its ports, as port-distribution's, nor L7, as http's and dns'): a tap then hands
        this flows grouped by shape (consume_shape)."""
        return self._by_shape is not None

    def consume_shape(self, shape: Shape, entry: FlowEntry, count: int) -> None:
        """`count` flows of one shape (cilia.flows.tap.ShapeConsumer), `entry` one of them: the
        series they add, from the shape's cache (made of one of its flows)."""
        if self._by_shape is None:
            raise TypeError("these metrics are not made of shapes alone (takes_shapes is false)")
        increments = self._by_shape.get(shape, entry)
        if increments:
            self._count(increments, count)

    def flush(self) -> None:
        self.expire()

    def missed(self, count: int) -> None:
        self.ring_lost += count

    def series_count(self) -> int:
        return len(self._counts) + len(self._histograms)

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
                    if self._counts.pop(key, None) is not None or self._histograms.pop(key, None) is not None:
                        removed += 1
                    for other in self._by_pod.values():  # a series may name two pods
                        other.discard(key)
        return removed

    # ----- Prometheus ----------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts = dict(self._counts)
            histograms = {key: list(series) for key, series in self._histograms.items()}
        families: list[CounterMetricFamily | HistogramMetricFamily] = []
        for metric in self.metrics:
            names = [*metric.context.names]
            for family in metric.families:
                kind = HistogramMetricFamily if family.buckets else CounterMetricFamily
                families.append(kind(family.metric, family.help, labels=[*family.labels, *names]))
        for (index, labels), value in sorted(counts.items()):
            counter = families[index]
            assert isinstance(counter, CounterMetricFamily)
            counter.add_metric(list(labels), value)
        for (index, labels), series in sorted(histograms.items()):
            histogram = families[index]
            assert isinstance(histogram, HistogramMetricFamily)
            bounds = self.families[index].buckets
            cumulative, buckets = 0.0, []
            for bound, count in zip((*bounds, float("inf")), series[:-1], strict=True):
                cumulative += count
                buckets.append((_bound(bound), cumulative))
            histogram.add_metric(list(labels), buckets, sum_value=series[-1])
        yield from families
        if self.metrics:  # Hubble: lost events are served whenever any metric is
            lost = CounterMetricFamily("hubble_lost_events", "Number of lost events", labels=["source"])
            lost.add_metric(["perf_event_ring_buffer"], self.datapath_lost())
            lost.add_metric(["hubble_ring_buffer"], self.ring_lost)
            yield lost
            yield CounterMetricFamily("cilia_hubble_metrics_series_overflow",
                                      "Flows not counted because the Hubble metrics reached their series limit",
                                      value=self.overflow)


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))
