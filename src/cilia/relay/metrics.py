"""The relay's /metrics (prometheus_client, its own registry): the peer pool by connection state
under upstream hubble-relay's name, and the relay's own work. Read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cilia.relay.observer import RelayObserver
from cilia.relay.pool import NodePool

STATES = ("READY", "CONNECTING", "IDLE", "TRANSIENT_FAILURE", "SHUTDOWN")


class RelayCollector(Collector):
    def __init__(self, pool: NodePool, observer: RelayObserver) -> None:
        self._pool = pool
        self._observer = observer

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        nodes = self._pool.nodes()
        status = GaugeMetricFamily("hubble_relay_pool_peer_connection_status",
                                   "Peers of the relay by the state of their connection", labels=["status"])
        for state in STATES:
            status.add_metric([state], sum(1 for n in nodes if n.state.name == state))
        yield status
        up = GaugeMetricFamily("cilia_relay_peer_available", "Whether the relay can read a node (1) or not (0)",
                               labels=["node"])
        for node in nodes:
            up.add_metric([node.name], 1.0 if node.available else 0.0)
        yield up
        stats = self._observer.stats
        yield CounterMetricFamily("cilia_relay_flows_forwarded", "Flows the relay sent to its clients",
                                  value=stats.flows_forwarded)
        yield CounterMetricFamily("cilia_relay_node_stream_errors", "Node streams that failed mid-way",
                                  value=stats.node_errors)
        yield GaugeMetricFamily("cilia_relay_flow_streams", "GetFlows streams open (gRPC and the service map)",
                                value=stats.streams_open)


def registry(pool: NodePool, observer: RelayObserver) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(RelayCollector(pool, observer))
    return reg
