"""The agent's metric families, with Cilium's metric and label names under the `cilia_` prefix.

Gauges and datapath counters are read from their owners at scrape time (nothing is copied or
kept in step); only regeneration, an event rather than a state, is counted as it happens
(`observe_regeneration`, a regeneration queue observer). Own registry, never the global one: two
agents in one process (tests) must not share series.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cilia.agent.api.maprows import reason_name
from cilia.endpoint.state import EndpointState
from cilia.maps.direction import TrafficDirection
from cilia.maps.metrics import MetricsKey

PREFIX = "cilia_"
# Cilium's buckets for cilium_endpoint_regeneration_time_stats_seconds are the default ones;
# ours reach lower because a regeneration here is often well under a millisecond.
REGENERATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                        30.0, 60.0)


@dataclass(frozen=True)
class Sources:
    """Where each family is read from at scrape time (the agent's components, fakes in tests)."""

    endpoint_states: Callable[[], Iterable[EndpointState]]
    identities: Callable[[], Iterable[bool]]  # one entry per identity: is it reserved
    policy_revision: Callable[[], int]
    services: Callable[[], int]
    metric_totals: Callable[[], Mapping[MetricsKey, tuple[int, int]]]  # (packets, bytes)
    events_lost: Callable[[], int]


class AgentCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        s = self._sources
        states = Tally(s.endpoint_states())
        gauge = GaugeMetricFamily(f"{PREFIX}endpoint_state", "Count of all endpoints, by state",
                                  labels=["endpoint_state"])
        for state in EndpointState:  # every state, 0 when empty: a series does not vanish
            gauge.add_metric([state.value], states.get(state, 0))
        yield gauge

        kinds = Tally("reserved" if reserved else "cluster_local" for reserved in s.identities())
        identity = GaugeMetricFamily(f"{PREFIX}identity", "Number of identities currently allocated",
                                     labels=["type"])
        for kind in ("cluster_local", "reserved"):
            identity.add_metric([kind], kinds.get(kind, 0))
        yield identity

        yield GaugeMetricFamily(f"{PREFIX}policy_max_revision", "Highest policy revision number in the agent",
                                value=s.policy_revision())
        yield GaugeMetricFamily(f"{PREFIX}services", "Number of services the agent installed",
                                value=s.services())
        yield CounterMetricFamily(f"{PREFIX}events_lost", "Datapath events lost before the agent read them",
                                  value=s.events_lost())
        yield from _datapath_families(s.metric_totals())


def _datapath_families(totals: Mapping[MetricsKey, tuple[int, int]]) -> Iterator[Metric]:
    """The metrics map summed over endpoints: drops by (reason, direction), forwards by direction."""
    drops: Tally[tuple[str, str]] = Tally()
    drop_bytes: Tally[tuple[str, str]] = Tally()
    forwards: Tally[str] = Tally()
    forward_bytes: Tally[str] = Tally()
    for key, (packets, nbytes) in totals.items():
        direction = TrafficDirection.name_of(key.direction, str(key.direction))
        if key.reason == 0:
            forwards[direction] += packets
            forward_bytes[direction] += nbytes
        else:
            drops[(reason_name(key.reason), direction)] += packets
            drop_bytes[(reason_name(key.reason), direction)] += nbytes
    families = (
        (CounterMetricFamily(f"{PREFIX}drop_count", "Total dropped packets, tagged by drop reason and "
                             "ingress/egress direction", labels=["reason", "direction"]), drops),
        (CounterMetricFamily(f"{PREFIX}drop_bytes", "Total dropped bytes, tagged by drop reason and "
                             "ingress/egress direction", labels=["reason", "direction"]), drop_bytes),
    )
    for family, tally in families:
        for (reason, direction), value in sorted(tally.items()):
            family.add_metric([reason, direction], value)
        yield family
    for family, by_direction in (
        (CounterMetricFamily(f"{PREFIX}forward_count", "Total forwarded packets, tagged by ingress/egress "
                             "direction", labels=["direction"]), forwards),
        (CounterMetricFamily(f"{PREFIX}forward_bytes", "Total forwarded bytes, tagged by ingress/egress "
                             "direction", labels=["direction"]), forward_bytes),
    ):
        for direction, value in sorted(by_direction.items()):
            family.add_metric([direction], value)
        yield family


class AgentMetrics:
    """The registry `/metrics` serves: the scrape-time collector plus the regeneration series."""

    def __init__(self, sources: Sources) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(sources))
        self.regeneration_seconds = Histogram(
            f"{PREFIX}endpoint_regeneration_time_stats_seconds", "Endpoint regeneration time stats",
            labelnames=["scope", "outcome"], buckets=REGENERATION_BUCKETS, registry=self.registry)
        self.regenerations = Counter(
            f"{PREFIX}endpoint_regenerations", "Count of all endpoint regenerations that have completed",
            labelnames=["outcome"], registry=self.registry)
        for outcome in ("success", "fail"):  # present from the start, at 0
            self.regenerations.labels(outcome=outcome)

    def observe_regeneration(self, _endpoint_id: int, seconds: float, error: str) -> None:
        """A regeneration queue observer (policy.regeneration.RegenerationQueue.add_observer)."""
        outcome = "fail" if error else "success"
        self.regenerations.labels(outcome=outcome).inc()
        self.regeneration_seconds.labels(scope="total", outcome=outcome).observe(seconds)
