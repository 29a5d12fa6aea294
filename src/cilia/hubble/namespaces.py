"""GetNamespaces' answer as Hubble's namespace manager keeps it (pkg/hubble/observer/namespace):
every namespace a flow's source or destination named, kept for an hour after it was last seen
(not only while a flow of it is still buffered), sorted by cluster then namespace.

The cluster is the agent's cluster name as Cilium's nodeTypes.GetClusterName gives it
(`reported_cluster`): the configured name, but empty for Cilium's default cluster `default` (and
for none), which is cilia's only one; so `hubble list namespaces -o wide` shows no cluster, as
against a Cilium agent. Upstream both the agent (LocalObserverServer) and the relay answer
GetNamespaces; the relay merges the nodes' answers, one entry per (cluster, namespace), sorted
the same way (cilia.relay.observer).

It is fed two ways: a FlowTap consumer (`consume`, seen now, as upstream tracks flows when it
processes them) on a small CPU budget, and the buffered flows at each GetNamespaces call
(`add_flows`, seen at each flow's time) for whatever the tap skipped."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cilia.flows.ring import FlowEntry
from cilia.flows.shape import Shape, ShapeCache
from cilia.hubble.pb import flow_pb2, observer_pb2

TTL_NS = 3600 * 10**9
DEFAULT_CLUSTER = "default"  # Cilium's defaults.ClusterName


def reported_cluster(name: str = DEFAULT_CLUSTER) -> str:
    """nodeTypes.GetClusterName(): the cluster name, empty for the default cluster."""
    return "" if name in ("", DEFAULT_CLUSTER) else name


CLUSTER = reported_cluster()  # cilia runs one cluster, the default one


class NamespaceTracker:
    def __init__(self, ttl_ns: int = TTL_NS, clock: Callable[[], int] = time.time_ns, cluster: str = CLUSTER) -> None:
        self._ttl = ttl_ns
        self._clock = clock
        self._cluster = cluster
        self._seen: dict[str, int] = {}  # namespace -> last seen (ns since the epoch)
        self._lock = threading.Lock()
        self._by_shape: ShapeCache[tuple[str, str]] = ShapeCache(_namespaces)

    def add(self, namespace: str, seen_ns: int) -> None:
        if not namespace:
            return
        with self._lock:
            if seen_ns > self._seen.get(namespace, -1):
                self._seen[namespace] = seen_ns

    def add_flows(self, flows: Iterable[flow_pb2.Flow]) -> None:
        for flow in flows:
            stamp = flow.time.ToNanoseconds()
            self.add(flow.source.namespace, stamp)
            self.add(flow.destination.namespace, stamp)

    def namespaces(self) -> list[observer_pb2.Namespace]:
        """Those seen within the TTL (older ones are forgotten), in upstream's order."""
        horizon = self._clock() - self._ttl
        with self._lock:
            for namespace in [ns for ns, seen in self._seen.items() if seen < horizon]:
                del self._seen[namespace]
            names = sorted(self._seen)
        return [observer_pb2.Namespace(cluster=self._cluster, namespace=name) for name in names]

    # ----- cilia.flows.tap.FlowConsumer -----------------------------------------------------------
    def consume(self, flow: Mapping[str, Any]) -> None:
        now = self._clock()
        for namespace in _namespaces(flow):
            self.add(namespace, now)

    # the namespaces are a shape's (cilia.flows.shape): the tap hands flows grouped by shape
    takes_shapes = True

    def consume_shape(self, shape: Shape, entry: FlowEntry, count: int) -> None:
        names = self._by_shape.get(shape, entry)
        if names:
            now = self._clock()
            for namespace in names:
                self.add(namespace, now)

    def flush(self) -> None:
        pass

    def missed(self, count: int) -> None:
        pass  # flows the tap skipped are still read from the buffer at the next GetNamespaces


def _namespaces(flow: Mapping[str, Any]) -> tuple[str, str]:
    """The namespaces of a flow's source and destination ("" for none)."""
    return (str((flow.get("source") or {}).get("namespace") or ""),
            str((flow.get("destination") or {}).get("namespace") or ""))
