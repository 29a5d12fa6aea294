"""Hubble flow metrics: the --hubble-metrics syntax (errors name the option; fuzzed), label
contexts, each handler's labels against a reference computed from the converted flow.Flow the
way upstream's Go handlers compute them, deleted pods' series, the series cap, the ring tap."""

from __future__ import annotations

import string
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tests.unit.mutation import FUZZ
from tests.unit.test_hubble_convert import EGRESS, INGRESS, builder, icmp6_echo, record, tcp_v4, udp_v4

from cilia.flows.ring import FlowRing
from cilia.flows.tap import FlowTap
from cilia.hubble.convert import convert
from cilia.hubble.metrics.context import LabelContext, context_value
from cilia.hubble.metrics.handlers import TRACE_POINT_NAMES, DropHandler, FlowHandler, PolicyHandler, TcpHandler
from cilia.hubble.metrics.options import (
    CONTEXT_OPTIONS,
    CONTEXTS,
    LABELS_CONTEXT,
    SUPPORTED,
    ContextOptions,
    MetricsOptionError,
    parse_metrics,
)
from cilia.hubble.metrics.processor import FlowMetrics
from cilia.hubble.pb import flow_pb2
from cilia.monitor.events import EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, decode


# ----- option syntax ---------------------------------------------------------------------------
def test_plain_list_space_or_comma_separated() -> None:
    assert [s.name for s in parse_metrics("flow drop tcp policy")] == ["flow", "drop", "tcp", "policy"]
    assert [s.name for s in parse_metrics("flow,drop,tcp,policy")] == ["flow", "drop", "tcp", "policy"]
    assert [s.name for s in parse_metrics(["flow", "drop,tcp"])] == ["flow", "drop", "tcp"]
    assert parse_metrics("") == ()


def test_context_options() -> None:
    [flow, drop, tcp, policy] = parse_metrics(
        "flow,drop,tcp,policy:sourceContext=namespace|pod|identity;destinationContext=pod")
    assert flow.context == drop.context == tcp.context == ContextOptions()
    assert policy.context.source == ("namespace", "pod", "identity")
    assert policy.context.destination == ("pod",)
    assert policy.context.label_names() == ["source", "destination"]


def test_labels_context_commas_stay_in_the_list() -> None:
    [policy, flow] = parse_metrics(
        "policy:sourceContext=pod;labelsContext=source_namespace,destination_namespace,traffic_direction,flow")
    assert policy.context.labels == ("source_namespace", "destination_namespace", "traffic_direction")
    assert flow.name == "flow"
    [drop] = parse_metrics("drop:sourceEgressContext=pod-name;destinationIngressContext=reserved-identity|ip")
    assert drop.context.source_egress == ("pod-name",)
    assert drop.context.destination_ingress == ("reserved-identity", "ip")
    assert drop.context.label_names() == ["source", "destination"]


@pytest.mark.parametrize(("text", "names"), [
    ("flows", "'flows'"),
    ("kafka", "kafka: not served"),
    ("flow:sourceContext=podx", "sourceContext=podx: unknown context 'podx'"),
    ("flow:sourceContext=", "sourceContext needs a value"),
    ("flow:sourceContext", "sourceContext needs a value"),
    ("flow:labelsContext=source_pod,nope", "labelsContext=source_pod,nope: unknown label 'nope'"),
    ("flow:labelsContext=source_pod,drop:sourceContext=x", "drop: sourceContext=x"),
    ("flow:labelsContext=source_pod;labelsContext=source_ip", "option labelsContext given twice"),
    ("flow:exemplars=true", "unknown option 'exemplars'"),
    ("flow:", "nothing after ':'"),
    ("flow:;sourceContext=pod", "empty option"),
    (":sourceContext=pod", "metric name is missing"),
    ("flow drop flow", "flow: given twice"),
    ("tcp:destinationContext=pod|pod", "given twice"),
])
def test_errors_name_the_metric_and_option(text: str, names: str) -> None:
    with pytest.raises(MetricsOptionError, match="--hubble-metrics") as info:
        parse_metrics(text)
    assert names in str(info.value)


_PIECES = st.sampled_from([*SUPPORTED, "dns", "", ":", ";", "=", "|", ",", " ", *CONTEXTS, *CONTEXT_OPTIONS,
                           "labelsContext", *LABELS_CONTEXT, "x", "\t", "é"])


@FUZZ
@given(st.lists(st.one_of(_PIECES, st.text(string.printable, max_size=4)), max_size=14).map("".join))
def test_fuzz_parser_accepts_or_names_the_option(text: str) -> None:
    try:
        specs = parse_metrics(text)
    except MetricsOptionError as exc:
        assert str(exc).startswith("--hubble-metrics ")
        return
    assert all(spec.name in SUPPORTED for spec in specs)
    assert len({s.name for s in specs}) == len(specs)


_CHOICES = st.lists(st.sampled_from(CONTEXTS), min_size=1, max_size=3, unique=True)


@FUZZ
@given(st.lists(st.sampled_from(SUPPORTED), min_size=1, max_size=4, unique=True),
       st.dictionaries(st.sampled_from(CONTEXT_OPTIONS), _CHOICES, max_size=3),
       st.lists(st.sampled_from(LABELS_CONTEXT), max_size=4, unique=True), st.sampled_from([" ", ","]))
def test_fuzz_valid_specs_round_trip(names: list[str], contexts: dict[str, list[str]], labels: list[str],
                                     separator: str) -> None:
    options = [f"{key}={'|'.join(values)}" for key, values in contexts.items()]
    if labels:
        options.append(f"labelsContext={','.join(labels)}")
    metrics = [names[0] + (":" + ";".join(options) if options else ""), *names[1:]]
    specs = parse_metrics(separator.join(metrics))
    assert [s.name for s in specs] == names
    first = specs[0].context
    assert first.labels == tuple(labels)
    assert first.source == tuple(contexts.get("sourceContext", ()))
    assert first.destination_egress == tuple(contexts.get("destinationEgressContext", ()))


# ----- label contexts --------------------------------------------------------------------------
ENDPOINT = {"ID": 7, "identity": 256, "namespace": "x", "pod_name": "client",
            "labels": ["k8s:app=client", "k8s:io.kubernetes.pod.namespace=x"],
            "workloads": [{"name": "client-deploy", "kind": "Deployment"}]}
WORLD = {"identity": 2, "labels": ["reserved:world"]}


def test_context_values() -> None:
    assert context_value("identity", ENDPOINT, "", []) == "k8s:app=client,k8s:io.kubernetes.pod.namespace=x"
    assert context_value("namespace", ENDPOINT, "", []) == "x"
    assert context_value("pod", ENDPOINT, "", []) == "x/client"
    assert context_value("pod-name", ENDPOINT, "", []) == "client"
    assert context_value("ip", ENDPOINT, "10.0.0.1", []) == "10.0.0.1"
    assert context_value("dns", ENDPOINT, "", ["a.example", "b.example"]) == "a.example,b.example"
    assert context_value("workload", ENDPOINT, "", []) == "x/client-deploy"
    assert context_value("workload-name", ENDPOINT, "", []) == "client-deploy"
    assert context_value("app", ENDPOINT, "", []) == "client"
    assert context_value("reserved-identity", ENDPOINT, "", []) == ""
    assert context_value("reserved-identity", WORLD, "", []) == "reserved:world"
    both = {"labels": ["reserved:world", "reserved:kube-apiserver"]}
    assert context_value("reserved-identity", both, "", []) == "reserved:kube-apiserver"
    assert context_value("pod", WORLD, "", []) == ""


def test_first_non_empty_alternative_and_direction_specific_contexts() -> None:
    [spec] = parse_metrics("flow:sourceContext=pod|reserved-identity;destinationContext=pod|ip;"
                           "destinationIngressContext=namespace;labelsContext=source_pod,source_namespace,"
                           "traffic_direction")
    context = LabelContext(spec.context)
    assert context.names == ["source", "destination", "source_pod", "source_namespace", "traffic_direction"]
    flow = {"source": WORLD, "destination": ENDPOINT, "IP": {"source": "1.1.1.1", "destination": "10.0.0.1"},
            "traffic_direction": "EGRESS"}
    values, pods = context.values(flow)
    assert values == ("reserved:world", "x/client", "", "", "egress")
    assert pods == {("x", "client")}  # the destination label names the pod
    values, pods = context.values({**flow, "traffic_direction": "INGRESS", "source": ENDPOINT,
                                   "destination": WORLD})
    assert values == ("x/client", "", "client", "x", "ingress")  # ingress: destination by namespace
    assert pods == {("x", "client")}
    values, _ = context.values({})
    assert values == ("", "", "", "", "unknown")


# ----- handlers: cilia's flows vs. upstream's computation on the converted flow.Flow ----------
# monitorAPI.TraceObservationPoints (cilium pkg/monitor/api/types.go)
_POINT_NAME = {0: "to-endpoint", 1: "to-proxy", 2: "to-host", 3: "to-stack", 4: "to-overlay", 5: "from-endpoint",
               6: "from-proxy", 7: "from-host", 8: "from-stack", 9: "from-overlay", 10: "from-network",
               11: "to-network", 12: "from-crypto", 13: "to-crypto"}


def upstream_labels(f: flow_pb2.Flow) -> dict[str, list[tuple[str, ...]]]:
    """What cilium's pkg/hubble/metrics handlers would count for this flow.Flow."""
    l4 = f.l4.WhichOneof("protocol")
    proto = {"TCP": "TCP", "UDP": "UDP", "ICMPv4": "ICMPv4", "ICMPv6": "ICMPv6", "SCTP": "SCTP"}.get(l4 or "",
                                                                                                   "Unknown flow")
    kind = f.event_type.type
    type_name, sub = {1: ("Drop", ""), 3: ("Capture", ""), 4: ("Trace", _POINT_NAME.get(f.event_type.sub_type, "")),
                      5: ("PolicyVerdict", "")}.get(kind, ("Unknown", str(kind)))
    verdict = flow_pb2.Verdict.Name(f.verdict)
    out: dict[str, list[tuple[str, ...]]] = {"flow": [(proto, type_name, sub, verdict)], "drop": [], "tcp": [],
                                             "policy": []}
    if f.verdict == flow_pb2.DROPPED:
        out["drop"].append((flow_pb2.DropReason.Name(f.drop_reason_desc), proto))
    if f.verdict in (flow_pb2.FORWARDED, flow_pb2.REDIRECTED) and l4 == "TCP" and f.HasField("IP"):
        family = flow_pb2.IPVersion.Name(f.IP.ipVersion)
        flags = f.l4.TCP.flags
        if flags.FIN:
            out["tcp"].append(("FIN", family))
        if flags.SYN:
            out["tcp"].append(("SYN-ACK" if flags.ACK else "SYN", family))
        if flags.RST:
            out["tcp"].append(("RST", family))
    if kind == 5:
        out["policy"].append((flow_pb2.TrafficDirection.Name(f.traffic_direction).lower(),
                              "unknown" if (f.ingress_allowed_by or f.egress_allowed_by or f.ingress_denied_by
                                            or f.egress_denied_by) else "none",
                              verdict.lower()))
    return out


RECORDS = [
    record(EVENT_TRACE, 0, tcp_v4(0x02)),  # SYN to-endpoint
    record(EVENT_TRACE, 3, tcp_v4(0x12), direction=INGRESS),  # SYN-ACK to-stack
    record(EVENT_TRACE, 5, tcp_v4(0x11)),  # FIN-ACK from-endpoint
    record(EVENT_TRACE, 2, tcp_v4(0x04)),  # RST to-host
    record(EVENT_TRACE, 0, udp_v4()),
    record(EVENT_TRACE, 0, icmp6_echo()),
    record(EVENT_DROP, 133, tcp_v4(), direction=INGRESS, rule_id=5),
    record(EVENT_DROP, 181, tcp_v4(), direction=INGRESS, rule_id=5),
    record(EVENT_DROP, 143, udp_v4()),
    record(EVENT_DROP, 220, icmp6_echo()),
    record(EVENT_POLICY_VERDICT, 1, tcp_v4(), direction=EGRESS, rule_id=5),
    record(EVENT_POLICY_VERDICT, 2, tcp_v4(), direction=INGRESS, rule_id=5),
    record(EVENT_POLICY_VERDICT, 3, tcp_v4(), direction=INGRESS),
    record(EVENT_POLICY_VERDICT, 0x80 | 3, tcp_v4(), direction=INGRESS),
]


@pytest.mark.parametrize("raw", RECORDS)
def test_handlers_match_upstream_on_the_converted_flow(raw: bytes) -> None:
    flow = builder().build(decode(raw))
    expected = upstream_labels(convert(flow))
    for handler in (FlowHandler(), DropHandler(), TcpHandler(), PolicyHandler()):
        assert handler.series(flow) == expected[handler.name], handler.name


def test_trace_point_names_cover_the_converter() -> None:
    from cilia.hubble.convert import TRACE_POINTS
    assert set(TRACE_POINT_NAMES) == set(TRACE_POINTS.values())
    assert FlowHandler().series({"event_type": {"type": 131}, "verdict": "TRANSLATED"}) == \
        [("Unknown flow", "Unknown", "7", "TRANSLATED")]


# ----- the collector ---------------------------------------------------------------------------
def scrape(metrics: FlowMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def flows_of(*raws: bytes) -> list[dict[str, Any]]:
    b = builder()
    return [b.build(decode(raw)) for raw in raws]


def test_names_and_labels_on_the_wire() -> None:
    metrics = FlowMetrics(parse_metrics("flow drop tcp policy:sourceContext=pod;destinationContext=pod"))
    for flow in flows_of(*RECORDS):
        metrics.process(flow)
    samples = scrape(metrics)
    expected = Counter(labels for flow in flows_of(*RECORDS) for labels in upstream_labels(convert(flow))["flow"])
    got = {tuple(dict(labels)[n] for n in ("protocol", "type", "subtype", "verdict")): value
           for (name, labels), value in samples.items() if name == "hubble_flows_processed_total"}
    assert got == expected and sum(got.values()) == len(RECORDS)
    assert samples[("hubble_drop_total", (("protocol", "TCP"), ("reason", "POLICY_DENIED")))] == 2  # drop + verdict
    # the SYN trace and the allowed verdict of a SYN (upstream counts any forwarded TCP flow)
    assert samples[("hubble_tcp_flags_total", (("family", "IPv4"), ("flag", "SYN")))] == 2
    assert samples[("hubble_tcp_flags_total", (("family", "IPv4"), ("flag", "SYN-ACK")))] == 1
    assert samples[("hubble_policy_verdicts_total", (("action", "dropped"), ("destination", "x/server"),
                                                     ("direction", "ingress"), ("match", "none"),
                                                     ("source", "x/client")))] == 1
    assert samples[("hubble_policy_verdicts_total", (("action", "audit"), ("destination", "x/server"),
                                                     ("direction", "ingress"), ("match", "none"),
                                                     ("source", "x/client")))] == 1
    assert samples[("hubble_lost_events_total", (("source", "hubble_ring_buffer"),))] == 0
    assert ("hubble_lost_events_total", (("source", "perf_event_ring_buffer"),)) in samples


def test_a_deleted_pods_series_go_after_the_grace_period() -> None:
    now = [100.0]
    metrics = FlowMetrics(parse_metrics("flow:sourceContext=pod drop:labelsContext=source_namespace,source_pod "
                                        "tcp:sourceContext=namespace"), pod_grace=60, clock=lambda: now[0])
    metrics.set_pods({("x", "client"), ("x", "server")})
    for flow in flows_of(*RECORDS):
        metrics.process(flow)
    before = metrics.series_count()
    metrics.set_pods({("x", "server")})  # client deleted
    assert metrics.expire() == 0  # not yet: a last scrape still sees the final counts
    now[0] += 61
    removed = metrics.expire()
    assert removed > 0 and metrics.series_count() == before - removed
    remaining = scrape(metrics)
    assert not any(dict(labels).get("source") == "x/client" for _name, labels in remaining)
    assert not any(dict(labels).get("source_pod") == "client" for _name, labels in remaining)
    # namespace context names no pod: kept
    assert any(name == "hubble_tcp_flags_total" and dict(labels).get("source") == "x" for name, labels in remaining)


def test_a_pod_back_within_the_grace_period_keeps_its_series() -> None:
    now = [0.0]
    metrics = FlowMetrics(parse_metrics("flow:sourceContext=pod"), pod_grace=60, clock=lambda: now[0])
    metrics.set_pods({("x", "client")})
    metrics.process(flows_of(RECORDS[0])[0])
    metrics.set_pods(set())
    metrics.set_pods({("x", "client")})
    now[0] = 1000
    assert metrics.expire() == 0 and metrics.series_count() == 1


def test_series_are_capped() -> None:
    metrics = FlowMetrics(parse_metrics("flow:sourceContext=ip"), max_series=3)
    for n in range(10):
        metrics.process({"verdict": "FORWARDED", "event_type": {"type": 4}, "IP": {"source": f"10.0.0.{n}"}})
    assert metrics.series_count() == 3 and metrics.overflow == 7
    assert scrape(metrics)[("cilia_hubble_metrics_series_overflow_total", ())] == 7


def test_tap_feeds_every_flow_once_and_counts_overwritten_ones() -> None:
    ring = FlowRing(8)
    metrics = FlowMetrics(parse_metrics("flow"))
    tap = FlowTap(ring, [metrics])
    b = builder()
    built = []

    def make(raw: bytes) -> Any:
        built.append(raw)
        return b.build(decode(raw))

    for raw in RECORDS[:5]:
        ring.add_lazy(lambda raw=raw: make(raw))
    assert tap.step() == 5 and len(built) == 5
    assert tap.step() == 0
    ring.last(10, __import__("cilia.flows.filter", fromlist=["FlowFilter"]).FlowFilter())
    assert len(built) == 5  # the ring kept what the tap built
    for _ in range(20):
        ring.add_lazy(lambda: make(RECORDS[0]))
    assert tap.step() == 8 and tap.missed == 12 and metrics.ring_lost == 12
    total = sum(v for (name, _), v in scrape(metrics).items() if name == "hubble_flows_processed_total")
    assert total == 13


def test_tap_over_its_cpu_budget_counts_the_rest_missed() -> None:
    ring = FlowRing(256)
    metrics = FlowMetrics(parse_metrics("flow"))
    tap = FlowTap(ring, [metrics], budget=0.0)
    for raw in RECORDS * 10:
        ring.add_lazy(lambda raw=raw: builder().build(decode(raw)))
    assert tap.step() == 0 and tap.missed == len(RECORDS) * 10 and metrics.ring_lost == tap.missed
    unlimited = FlowTap(ring, [metrics], budget=None)
    ring.add_lazy(lambda: builder().build(decode(RECORDS[0])))
    assert unlimited.step() == 1


def test_entry_followers_get_batches_unbuilt_and_lose_unbuilt_when_full() -> None:
    import asyncio

    from cilia.flows.ring import EntrySubscriber

    built: list[int] = []

    async def scenario() -> tuple[int, int, int]:
        ring = FlowRing(64)
        follower = EntrySubscriber(asyncio.get_running_loop(), size=4)
        ring.subscribe_entries(follower)
        for n in range(10):
            ring.add_lazy(lambda n=n: built.append(n) or {"uuid": str(n)})
        assert built == []  # the pump built nothing
        batch = await asyncio.wait_for(follower.batch(), 5)
        flows = [entry.get() for entry in batch]
        ring.unsubscribe_entries(follower)
        ring.add_lazy(lambda: {"uuid": "late"})
        return len(flows), follower.lost, len(built)

    assert asyncio.run(scenario()) == (4, 6, 4)
