"""Flows counted by shape (cilia.flows.shape): a FlowTap hands the Hubble metrics and the namespace
tracker each pass's records grouped by shape, building one flow a shape, instead of every flow.
Held to the slow path, the reference (every record built into a flow dict and processed): the
same series and values, the same namespaces, for generated records, records of close shapes and
lookups that change between passes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.test_hubble_metrics import scrape
from tests.unit.test_hubble_wire import (
    BOOT_NS,
    LABELS,
    NAMES,
    RULES_ALL,
    SERVICES,
    VIEWS6,
    close_records,
    records,
    shaped,
)

from cilia.flows.build import EndpointView, Flow, FlowBuilder
from cilia.flows.ring import FlowRing
from cilia.flows.shape import Shape
from cilia.flows.tap import FlowTap
from cilia.hubble.metrics.options import parse_metrics
from cilia.hubble.metrics.processor import FlowMetrics
from cilia.hubble.namespaces import NamespaceTracker
from cilia.hubble.wire import WireEncoder, shape_key
from cilia.monitor.events import EVENT_TRACE, DecodeError, decode

SPECS = [
    "flow drop tcp policy:sourceContext=pod;destinationContext=pod",  # the overhead bench's
    "flow:sourceContext=namespace|ip;destinationContext=identity",
    "drop:sourceContext=reserved-identity|pod-name;destinationContext=dns|ip",
    "tcp:sourceEgressContext=pod;sourceIngressContext=ip;destinationContext=app",
    "policy:labelsContext=source_namespace,source_pod,destination_ip,traffic_direction",
    "flow:sourceContext=workload|identity;destinationContext=workload-name|reserved-identity",
]


class Lookups:
    """The lookups a pump's builder and encoder share; changed in place between passes."""

    def __init__(self) -> None:
        self.views: dict[str, EndpointView] = dict(VIEWS6)
        self.labels: dict[int, list[str]] = {k: list(v) for k, v in LABELS.items()}
        self.names: dict[tuple[int, str], list[str]] = {k: list(v) for k, v in NAMES.items()}
        self.rules: dict[int, dict[str, Any]] = {k: dict(v) for k, v in RULES_ALL.items()}

    def identities(self, identity: int) -> list[str]:
        return list(self.labels.get(identity, []))

    def names_of(self, endpoint_id: int, ip: str) -> list[str]:
        return list(self.names.get((endpoint_id, ip), []))


class Context:
    """A RecordContext as the event pump's: its views (a copy: a new context when they change), the
    builder (slow path) and the encoder's shapes, on the same lookups."""

    def __init__(self, lookups: Lookups) -> None:
        self.views = dict(lookups.views)
        self.builder = FlowBuilder("n1", self.views.get, lookups.identities, BOOT_NS, lookups.rules.get,
                                   SERVICES.get, names=lookups.names_of)
        self.encoder = WireEncoder("n1", lookups.identities, BOOT_NS, lookups.rules.get, SERVICES.get,
                                   lookups.names_of)
        self.built = 0

    def build(self, raw: bytes, flow_id: str) -> Flow | None:
        self.built += 1
        try:
            return self.builder.build(decode(raw), self.views.get, flow_id)
        except DecodeError:
            return None

    def encode(self, raw: bytes, flow_id: str) -> bytes | None:
        return None

    shape_key = staticmethod(shape_key)

    def shape(self, raw: bytes) -> Shape | None:
        return self.encoder.shape(raw, self.views.get)


def slow_metrics(spec: str, flows: list[Flow]) -> dict[Any, float]:
    metrics = FlowMetrics(parse_metrics(spec))
    for flow in flows:
        metrics.process(flow)
    return scrape(metrics)


def built(context: Context, raws: list[bytes]) -> list[Flow]:
    flows = [context.builder.build(decode(raw), context.views.get) for raw in raws if _decodes(raw)]
    return flows


def _decodes(raw: bytes) -> bool:
    try:
        decode(raw)
    except DecodeError:
        return False
    return True


def by_tap(spec: str, batches: list[tuple[Context, list[bytes]]]) -> tuple[FlowMetrics, NamespaceTracker, FlowTap]:
    ring = FlowRing(4096)
    metrics = FlowMetrics(parse_metrics(spec))
    namespaces = NamespaceTracker(clock=lambda: 1)
    tap = FlowTap(ring, [metrics, namespaces], budget=None)
    for context, raws in batches:
        ring.add_records(raws, context)
        tap.step()
    return metrics, namespaces, tap


@settings(max_examples=300, deadline=None)
@given(st.lists(records(), min_size=1, max_size=12), st.sampled_from(SPECS))
def test_metrics_by_shape_are_the_slow_paths(raws: list[bytes], spec: str) -> None:
    context = Context(Lookups())
    metrics, namespaces, tap = by_tap(spec, [(context, raws + raws)])  # each shape met at least twice
    assert tap._by_shape
    flows = built(context, raws + raws)
    assert scrape(metrics) == slow_metrics(spec, flows)
    slow_namespaces = NamespaceTracker(clock=lambda: 1)
    for flow in flows:
        slow_namespaces.consume(flow)
    assert namespaces.namespaces() == slow_namespaces.namespaces()


@settings(max_examples=300, deadline=None)
@given(close_records(), st.sampled_from(SPECS))
def test_records_of_close_shapes_are_counted_as_the_slow_path_counts_them(raws: list[bytes], spec: str) -> None:
    context = Context(Lookups())
    metrics, _namespaces, _tap = by_tap(spec, [(context, raws)])
    assert scrape(metrics) == slow_metrics(spec, built(context, raws))


def test_one_flow_is_built_a_shape() -> None:
    context = Context(Lookups())
    fields = {"packet": "tcp", "mac": 5, "src_mac": 1, "flags": 0x10, "etype": EVENT_TRACE, "subtype": 0,
              "file": 0, "ct": 0, "line": 0, "ifindex": 4, "src_id": 256, "dst_id": 257, "direction": 1, "slot": 0}
    raws = [shaped(fields, 1000 + n, 40000 + n, 80) for n in range(500)]  # one shape, new ports each
    raws += [shaped({**fields, "flags": 0x02}, 9000 + n, 50000 + n, 80) for n in range(100)]  # SYNs: another
    spec = SPECS[0]
    metrics, _namespaces, tap = by_tap(spec, [(context, raws[:300]), (context, raws[300:])])
    assert context.built == 2 and tap.flows == 600  # the first of each shape, in the first pass
    assert scrape(metrics) == slow_metrics(spec, built(context, raws))


@pytest.mark.parametrize("change", ["view", "labels", "names", "rule"])
def test_a_shape_is_counted_anew_when_its_lookups_change(change: str) -> None:
    """Between two passes a pod's view is replaced (a new context), a peer identity's labels, a DNS
    name or a rule change: the second pass's flows get the new labels, as the slow path's do."""
    lookups = Lookups()
    first = Context(lookups)
    base = {"packet": "tcp-world", "mac": 5, "src_mac": 1, "flags": 0x02, "etype": EVENT_TRACE, "subtype": 0,
            "file": 0, "ct": 0, "line": 0, "ifindex": 4, "src_id": 256, "dst_id": 2, "direction": 1, "slot": 0}
    if change == "rule":
        base.update(etype=5, slot=5)  # a policy verdict naming rule 5
    raws = [shaped(base, 1000 + n, 40000 + n, 443) for n in range(20)]
    spec = {"view": "flow:sourceContext=pod", "labels": "flow:destinationContext=reserved-identity",
            "names": "flow:destinationContext=dns", "rule": "policy:sourceContext=pod"}[change] + " drop tcp"
    ring = FlowRing(4096)
    metrics = FlowMetrics(parse_metrics(spec))
    tap = FlowTap(ring, [metrics], budget=None)
    ring.add_records(raws, first)
    tap.step()
    flows = built(first, raws)  # the slow path builds them when read: here, at the pass
    if change == "view":
        lookups.views["10.200.1.2"] = EndpointView(7, 256, "x", "client-renamed", ["k8s:app=client"])
    elif change == "labels":
        lookups.labels[2] = ["reserved:world-ipv4="]
    elif change == "names":
        lookups.names[(7, "192.168.5.1")] = ["changed.example.test"]
    else:
        lookups.rules.pop(5)  # the rule is gone: its verdicts match "none"
    second = Context(lookups) if change == "view" else first
    ring.add_records(raws, second)
    tap.step()
    flows += built(second, raws)
    assert scrape(metrics) == slow_metrics(spec, flows)
    # the change shows: the second pass's flows add to other series than the first's (but for
    # the rule: a verdict's match type is the record's, no label names the rule)
    assert (set(slow_metrics(spec, flows[:20])) != set(slow_metrics(spec, flows[20:]))) == (change != "rule")


def test_metrics_that_read_ports_are_fed_flows() -> None:
    """port-distribution labels a flow by its port: not a shape's, so its tap builds every flow."""
    context = Context(Lookups())
    fields = {"packet": "tcp", "mac": 5, "src_mac": 1, "flags": 0x02, "etype": EVENT_TRACE, "subtype": 0,
              "file": 0, "ct": 0, "line": 0, "ifindex": 4, "src_id": 256, "dst_id": 257, "direction": 1, "slot": 0}
    raws = [shaped(fields, 1000 + n, 40000, 80 + n % 3) for n in range(9)]
    spec = "flow port-distribution"
    metrics, _namespaces, tap = by_tap(spec, [(context, raws)])
    assert not metrics.takes_shapes and not tap._by_shape and context.built == 9
    assert scrape(metrics) == slow_metrics(spec, built(context, raws))
    with pytest.raises(TypeError):
        metrics.consume_shape((b"", None, None, None), None, 1)  # type: ignore[arg-type]


def test_series_cap_by_shape_as_by_flow() -> None:
    """At the series limit, the flows of shapes met later are the ones counted as overflow."""
    context = Context(Lookups())
    base = {"packet": "tcp", "mac": 5, "src_mac": 1, "flags": 0x02, "etype": EVENT_TRACE, "subtype": 0,
            "file": 0, "ct": 0, "line": 0, "ifindex": 4, "src_id": 256, "dst_id": 257, "direction": 1, "slot": 0}
    raws = [shaped({**base, "subtype": subtype}, n, 40000 + n, 80) for n, subtype in enumerate([0, 3, 0, 4, 5, 3] * 3)]
    ring = FlowRing(64)
    metrics = FlowMetrics(parse_metrics("flow"), max_series=2)
    tap = FlowTap(ring, [metrics], budget=None)
    ring.add_records(raws, context)
    tap.step()
    slow = FlowMetrics(parse_metrics("flow"), max_series=2)
    for flow in built(context, raws):
        slow.process(flow)
    assert scrape(metrics) == scrape(slow) and metrics.overflow == slow.overflow > 0
