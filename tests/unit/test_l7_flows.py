"""L7 flows end to end without a kernel: proxy access records -> flows (Hubble's fields and
summary strings, cilium pkg/hubble/parser/seven) -> flow.Flow (Layer7) -> Hubble's http / dns
filters and metrics (pkg/hubble/filters/http.go, pkg/hubble/metrics/{http,dns}), the agent's
socket reader, cilia-proxy's records and `cilia observe`'s L7 flags."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cilia.agent.accesslog import AccessLogReader
from cilia.cli.observe import compact_line
from cilia.cli.observe_request import ObserveArgs, ObserveArgumentError, build_request
from cilia.flows.build import EndpointView
from cilia.flows.l7 import L7FlowBuilder, canonical_header, summary
from cilia.flows.ring import FlowRing
from cilia.hubble.convert import convert
from cilia.hubble.filters import FilterError, FlowFilters
from cilia.hubble.metrics.options import MetricsOptionError, parse_metrics
from cilia.hubble.metrics.processor import FlowMetrics
from cilia.hubble.pb import flow_pb2
from cilia.proxy.accesslog import (
    FLUSH_DELAY,
    MAX_DATAGRAM,
    AccessLogSender,
    AccessRecord,
    DnsRecord,
    HttpRecord,
    PolicyRef,
)
from cilia.testing import wait_for

FF = flow_pb2.FlowFilter
CLIENT = EndpointView(11, 300, "default", "tiefighter", ["k8s:org=empire", "k8s:class=tiefighter"])
SERVER = EndpointView(12, 301, "default", "deathstar", ["k8s:org=empire", "k8s:class=deathstar"])
VIEWS = {"10.200.1.2": CLIENT, "10.200.1.3": SERVER}
T0 = 1_764_600_000_123_456_789


def builder() -> L7FlowBuilder:
    rules = {7: {"kind": "CiliumNetworkPolicy", "namespace": "default", "name": "rule1", "rule": "ingress[0]",
                 "id": 7}}
    return L7FlowBuilder("n1", VIEWS.get, lambda identity: ["reserved:world"] if identity == 2 else [],
                         rules.get)


def http_record(kind: str = "REQUEST", verdict: str = "FORWARDED", code: int = 0, method: str = "GET",
                url: str = "http://deathstar/v1/", latency: int = 0, **kw: Any) -> AccessRecord:
    (sip, sport, sid), (dip, dport, did) = ("10.200.1.2", 40000, 300), ("10.200.1.3", 80, 301)  # client, server
    return AccessRecord(time_ns=T0, type=kind, verdict=verdict, source_ip=sip, source_port=sport,  # type: ignore[arg-type]
                        destination_ip=dip, destination_port=dport, protocol="TCP", source_identity=sid,
                        destination_identity=did, endpoint_id=12, ingress=True, latency_ns=latency,
                        http=HttpRecord(method, url, "HTTP/1.1", code,
                                        [("x-request-id", "r1"), ("accept", "*/*"), ("user-agent", "curl")]),
                        **kw)


def dns_record(kind: str = "REQUEST", verdict: str = "FORWARDED", rcode: int = 0, ips: list[str] | None = None,
               qtypes: list[str] | None = None, cnames: list[str] | None = None) -> AccessRecord:
    return AccessRecord(time_ns=T0, type=kind, verdict=verdict, source_ip="10.200.1.2", source_port=5353,  # type: ignore[arg-type]
                        destination_ip="10.200.0.10", destination_port=53, protocol="UDP", source_identity=300,
                        destination_identity=2, endpoint_id=11, ingress=False,
                        dns=DnsRecord("api.example.test.", qtypes or ["A"], rcode, ips or [], 30, cnames or [],
                                      ["A"] * len(ips or [])))


def pb(record: AccessRecord) -> flow_pb2.Flow:
    return convert(builder().build(record))


# ----- record -> flow --------------------------------------------------------------------------------------------
def test_http_request_flow_has_hubbles_fields() -> None:
    flow = builder().build(http_record(policies=[PolicyRef("CiliumNetworkPolicy", "default", "rule1")]))
    assert flow["Type"] == "L7" and flow["event_type"] == {"type": 129}
    assert flow["verdict"] == "FORWARDED" and flow["traffic_direction"] == "INGRESS" and flow["is_reply"] is False
    assert flow["time"] == "2025-12-01T14:40:00.123457Z"
    assert flow["IP"] == {"source": "10.200.1.2", "destination": "10.200.1.3", "ipVersion": "IPv4"}
    assert flow["l4"] == {"TCP": {"source_port": 40000, "destination_port": 80}}
    assert flow["source"] == {"ID": 11, "identity": 300, "namespace": "default", "pod_name": "tiefighter",
                              "labels": ["k8s:class=tiefighter", "k8s:org=empire"]}  # sorted, as Hubble
    assert flow["destination"]["pod_name"] == "deathstar"
    http = flow["l7"]["http"]
    assert "code" not in http  # a request carries no status
    assert http["headers"] == [{"key": "Accept", "value": "*/*"}, {"key": "User-Agent", "value": "curl"},
                               {"key": "X-Request-Id", "value": "r1"}]  # canonical names, sorted
    assert flow["l7"]["type"] == "REQUEST"
    assert flow["ingress_allowed_by"] == [{"kind": "CiliumNetworkPolicy", "namespace": "default", "name": "rule1"}]
    assert flow["Summary"] == "HTTP/1.1 GET http://deathstar/v1/"


def test_http_response_and_denied_flows() -> None:
    flow = builder().build(http_record("RESPONSE", "DROPPED", 403, "PUT", "http://deathstar/v1/exhaust-port",
                                       latency=2_600_000))
    assert flow["is_reply"] is True and flow["verdict"] == "DROPPED"
    assert flow["source"]["pod_name"] == "deathstar" and flow["destination"]["pod_name"] == "tiefighter"
    assert flow["l7"] == {"type": "RESPONSE", "latency_ns": 2_600_000, "http": {
        "code": 403, "method": "PUT", "url": "http://deathstar/v1/exhaust-port", "protocol": "HTTP/1.1",
        "headers": flow["l7"]["http"]["headers"]}}
    assert flow["Summary"] == "HTTP/1.1 403 2ms (PUT http://deathstar/v1/exhaust-port)"
    assert "ingress_denied_by" not in flow  # default deny: no policy named
    allowed = builder().build(http_record(rule_id=7))  # the proxy named the rule entry: the agent resolves it
    assert [p["name"] for p in allowed["ingress_allowed_by"]] == ["rule1"]
    denied = builder().build(http_record(verdict="DROPPED", policies=[PolicyRef("CiliumNetworkPolicy", "d", "x")]))
    assert [p["name"] for p in denied["ingress_denied_by"]] == ["x"]


def test_unknown_endpoint_falls_back_to_the_identity() -> None:
    flow = builder().build(dns_record())
    assert flow["destination"] == {"identity": 2, "labels": ["reserved:world"]}
    answer = builder().build(dns_record("RESPONSE", ips=["1.2.3.4"]))  # the DNS server answers the pod
    assert answer["source"] == {"identity": 2, "labels": ["reserved:world"]}
    assert answer["IP"]["source"] == "10.200.0.10" and answer["l4"]["UDP"]["source_port"] == 53
    assert flow["traffic_direction"] == "EGRESS" and flow["l4"] == {"UDP": {"source_port": 5353,
                                                                            "destination_port": 53}}
    # a view at the address whose identity disagrees with the proxy's (a reused IP) is not trusted
    stale = builder().build(replace(http_record(), source_identity=999))
    assert stale["source"] == {"identity": 999, "labels": []}


@pytest.mark.parametrize(("record", "text"), [
    (dns_record(), "DNS Query api.example.test. A"),
    (dns_record("REQUEST", qtypes=["A", "AAAA"]), "DNS Query api.example.test. A,AAAA"),
    (dns_record("RESPONSE", ips=["1.2.3.4"]), 'DNS Answer "1.2.3.4" TTL: 30 (Proxy api.example.test. A)'),
    (dns_record("RESPONSE", ips=["1.2.3.4", "1.2.3.5"], cnames=["a.cdn.example.test."]),
     'DNS Answer "1.2.3.4,1.2.3.5" CNAMEs: "a.cdn.example.test." TTL: 30 (Proxy api.example.test. A)'),
    (dns_record("RESPONSE"), "DNS Answer  TTL: 30 (Proxy api.example.test. A)"),
    (dns_record("RESPONSE", rcode=3), "DNS Answer RCode: Non-Existent Domain TTL: 30 (Proxy api.example.test. A)"),
    (dns_record("RESPONSE", rcode=5), "DNS Answer RCode: Query Refused TTL: 30 (Proxy api.example.test. A)"),
    (http_record("RESPONSE", code=200, latency=1_999_999), "HTTP/1.1 200 1ms (GET http://deathstar/v1/)"),
])
def test_summaries_are_hubbles(record: AccessRecord, text: str) -> None:
    assert summary(record) == text
    assert builder().build(record)["Summary"] == text


def test_dns_query_carries_only_its_question() -> None:
    query = builder().build(dns_record())["l7"]["dns"]
    assert query == {"query": "api.example.test.", "observation_source": "proxy", "qtypes": ["A"]}
    answer = builder().build(dns_record("RESPONSE", ips=["1.2.3.4"]))["l7"]["dns"]
    assert answer == {"query": "api.example.test.", "observation_source": "proxy", "qtypes": ["A"],
                      "ips": ["1.2.3.4"], "ttl": 30, "cnames": [], "rcode": 0, "rrtypes": ["A"]}


def test_canonical_header_names() -> None:
    assert canonical_header("x-request-id") == "X-Request-Id"
    assert canonical_header("CONTENT-TYPE") == "Content-Type"
    assert canonical_header("bad name") == "bad name"


# ----- flow -> flow.Flow -----------------------------------------------------------------------------------------
def test_layer7_on_the_wire() -> None:
    message = pb(http_record("RESPONSE", code=200, latency=5))
    assert message.Type == flow_pb2.L7 and message.event_type.type == 129
    assert message.l7.type == flow_pb2.RESPONSE and message.l7.latency_ns == 5
    assert message.l7.WhichOneof("record") == "http"
    assert (message.l7.http.code, message.l7.http.method, message.l7.http.protocol) == (200, "GET", "HTTP/1.1")
    assert message.is_reply.value is True and message.reply is True
    assert message.traffic_direction == flow_pb2.INGRESS and message.l4.TCP.source_port == 80
    assert message.drop_reason_desc == flow_pb2.DROP_REASON_UNKNOWN
    request = pb(http_record())
    assert request.HasField("is_reply") and request.is_reply.value is False
    as_json = json_format.MessageToDict(request, preserving_proto_field_name=True)
    assert as_json["l7"] == {"type": "REQUEST", "http": {
        "method": "GET", "url": "http://deathstar/v1/", "protocol": "HTTP/1.1",
        "headers": [{"key": "Accept", "value": "*/*"}, {"key": "User-Agent", "value": "curl"},
                    {"key": "X-Request-Id", "value": "r1"}]}}
    dns = pb(dns_record("RESPONSE", rcode=3, ips=["1.2.3.4"]))
    assert dns.l7.WhichOneof("record") == "dns"
    assert (dns.l7.dns.query, list(dns.l7.dns.ips), dns.l7.dns.ttl, dns.l7.dns.rcode, list(dns.l7.dns.qtypes),
            list(dns.l7.dns.rrtypes), dns.l7.dns.observation_source) == \
        ("api.example.test.", ["1.2.3.4"], 30, 3, ["A"], ["A"], "proxy")


def test_layer7_field_numbers_are_upstreams() -> None:
    """flow.proto: Flow.l7 = 15; Layer7 type 1, latency_ns 2, dns 100, http 101; HTTP 1-5; DNS 1-8."""
    numbers = {f.name: f.number for f in flow_pb2.Layer7.DESCRIPTOR.fields}
    assert numbers == {"type": 1, "latency_ns": 2, "dns": 100, "http": 101, "kafka": 102}
    assert flow_pb2.Flow.DESCRIPTOR.fields_by_name["l7"].number == 15
    assert {f.name: f.number for f in flow_pb2.HTTP.DESCRIPTOR.fields} == \
        {"code": 1, "method": 2, "url": 3, "protocol": 4, "headers": 5}
    assert {f.name: f.number for f in flow_pb2.DNS.DESCRIPTOR.fields} == \
        {"query": 1, "ips": 2, "ttl": 3, "cnames": 4, "observation_source": 5, "rcode": 6, "qtypes": 7, "rrtypes": 8}
    assert (flow_pb2.REQUEST, flow_pb2.RESPONSE, flow_pb2.SAMPLE, flow_pb2.L7) == (1, 2, 3, 2)


# ----- filters (pkg/hubble/filters/http.go, dns.go) ----------------------------------------------------------------
FLOWS = {
    "req": pb(http_record()),
    "ok": pb(http_record("RESPONSE", code=200)),
    "denied": pb(http_record("RESPONSE", "DROPPED", 403, "PUT", "http://deathstar/v1/exhaust-port")),
    "notfound": pb(http_record("RESPONSE", code=404, url="http://deathstar/v2/x%2Fy?q=1")),
    "dns": pb(dns_record()),
}


def matching(*whitelist: flow_pb2.FlowFilter) -> set[str]:
    filters = FlowFilters(list(whitelist), [])
    return {name for name, flow in FLOWS.items() if filters.matches(flow)}


def test_http_status_code_full_and_prefix() -> None:
    assert matching(FF(http_status_code=["403"])) == {"denied"}
    assert matching(FF(http_status_code=["4+"])) == {"denied", "notfound"}
    assert matching(FF(http_status_code=["40+"])) == {"denied", "notfound"}
    assert matching(FF(http_status_code=["2+", "404"])) == {"ok", "notfound"}
    assert matching(FF(http_status_code=["20+"])) == {"ok"}  # a request (code 0) never matches
    for bad in ("99", "4", "600", "4++", "+", "2xx", "1234"):
        with pytest.raises(FilterError, match="invalid http status code filter: invalid status code prefix"):
            FlowFilters([FF(http_status_code=[bad])], [])


def test_http_method_path_url_header() -> None:
    assert matching(FF(http_method=["put"])) == {"denied"}  # EqualFold
    assert matching(FF(http_method=["GET"])) == {"req", "ok", "notfound"}
    assert matching(FF(http_path=["^/v1/$"])) == {"req", "ok"}
    assert matching(FF(http_path=["exhaust"])) == {"denied"}  # unanchored, as Go's MatchString
    assert matching(FF(http_path=["^/v2/x/y$"])) == {"notfound"}  # the decoded path, without the query
    assert matching(FF(http_url=[r"\?q=1$"])) == {"notfound"}
    assert matching(FF(http_header=[flow_pb2.HTTPHeader(key="X-Request-Id", value="r1")])) == \
        {"req", "ok", "denied", "notfound"}
    assert matching(FF(http_header=[flow_pb2.HTTPHeader(key="x-request-id", value="r1")])) == set()  # exact
    assert matching(FF(http_method=["GET"], http_status_code=["2+"])) == {"ok"}  # AND within a filter
    with pytest.raises(FilterError, match="invalid http path filter"):
        FlowFilters([FF(http_path=["("])], [])


def test_http_path_needs_a_request_uri() -> None:
    relative = pb(http_record(url="v1/relative"))
    bad_escape = pb(http_record(url="/a%zz"))
    path_only = pb(http_record(url="//double/slash"))
    filters = FlowFilters([FF(http_path=[".*"])], [])
    assert not filters.matches(relative) and not filters.matches(bad_escape)
    assert FlowFilters([FF(http_path=["^//double/slash$"])], []).matches(path_only)


@pytest.mark.parametrize(("field", "what"), [
    ({"http_status_code": ["200"]}, "http status code"), ({"http_method": ["GET"]}, "http method"),
    ({"http_path": ["/"]}, "http path"), ({"http_url": ["x"]}, "http url"),
    ({"http_header": [flow_pb2.HTTPHeader(key="a", value="b")]}, "http headers"),
])
def test_http_fields_need_an_l7_event_type(field: dict[str, Any], what: str) -> None:
    with pytest.raises(FilterError, match=f"filtering by {what} requires the event type filter to only match 'l7'"):
        FlowFilters([FF(event_type=[flow_pb2.EventTypeFilter(type=1)], **field)], [])
    l7 = FF(event_type=[flow_pb2.EventTypeFilter(type=1), flow_pb2.EventTypeFilter(type=129)], **field)
    FlowFilters([l7], [])  # one l7 type among others is enough


def test_event_type_l7_and_dns_query() -> None:
    assert matching(FF(event_type=[flow_pb2.EventTypeFilter(type=129)])) == set(FLOWS)
    assert matching(FF(dns_query=[r"^api\.example\.test\.$"])) == {"dns"}
    assert matching(FF(dns_query=["example"])) == {"dns"}
    assert matching(FF(protocol=["http"])) == {"req", "ok", "denied", "notfound"}
    assert matching(FF(protocol=["dns"])) == {"dns"}


# ----- metrics (pkg/hubble/metrics/http, dns) -----------------------------------------------------------------------
def scrape(metrics: FlowMetrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry()
    registry.register(metrics)
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def feed(spec: str, *records: AccessRecord) -> dict[str, list[tuple[dict[str, str], float]]]:
    metrics = FlowMetrics(parse_metrics(spec))
    for r in records:
        metrics.process(builder().build(r))
    return scrape(metrics)


def test_http_v2_counts_responses_with_status_and_a_duration_histogram() -> None:
    got = feed("httpV2:sourceContext=pod;destinationContext=pod",
               http_record(), http_record("RESPONSE", code=200, latency=30_000_000),
               http_record("RESPONSE", "DROPPED", 403, "PUT", latency=200_000))
    assert sorted((s["method"], s["status"], s["protocol"], s["reporter"], s["source"], s["destination"], v)
                  for s, v in got["hubble_http_requests_total"]) == [
        ("GET", "200", "HTTP/1.1", "server", "default/tiefighter", "default/deathstar", 1.0),  # request's sides
        ("PUT", "403", "HTTP/1.1", "server", "default/tiefighter", "default/deathstar", 1.0)]
    buckets = {(s["method"], s["le"]): v for s, v in got["hubble_http_request_duration_seconds_bucket"]}
    assert buckets[("GET", "0.025")] == 0 and buckets[("GET", "0.05")] == 1 and buckets[("GET", "+Inf")] == 1
    assert buckets[("PUT", "0.005")] == 1
    assert {s["le"] for s, _ in got["hubble_http_request_duration_seconds_bucket"]} == {
        "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf"}
    sums = {s["method"]: v for s, v in got["hubble_http_request_duration_seconds_sum"]}
    assert sums["GET"] == pytest.approx(0.03)
    assert "hubble_http_responses_total" not in got


def test_http_v1_requests_and_responses() -> None:
    got = feed("http", http_record(), http_record("RESPONSE", code=404, latency=1))
    assert [(s, v) for s, v in got["hubble_http_requests_total"]] == [
        ({"method": "GET", "protocol": "HTTP/1.1", "reporter": "server"}, 1.0)]
    assert [(s, v) for s, v in got["hubble_http_responses_total"]] == [
        ({"method": "GET", "protocol": "HTTP/1.1", "status": "404", "reporter": "server"}, 1.0)]
    assert got["hubble_http_request_duration_seconds_count"] == [({"method": "GET", "reporter": "server"}, 1.0)]
    egress = replace(http_record(), ingress=False)
    assert feed("http", egress)["hubble_http_requests_total"][0][0]["reporter"] == "client"


def test_dns_metrics() -> None:
    got = feed("dns", dns_record(), dns_record(verdict="DROPPED"),
               dns_record("RESPONSE", ips=["1.2.3.4", "1.2.3.5"]), dns_record("RESPONSE", rcode=3))
    assert sorted((s["rcode"], s["qtypes"], s["ips_returned"], v) for s, v in got["hubble_dns_queries_total"]) == [
        ("", "A", "0", 1.0), ("Policy denied", "A", "0", 1.0)]
    assert sorted((s["rcode"], s["ips_returned"], v) for s, v in got["hubble_dns_responses_total"]) == [
        ("No Error", "2", 1.0), ("Non-Existent Domain", "0", 1.0)]
    assert got["hubble_dns_response_types_total"] == [({"type": "A", "qtypes": "A"}, 2.0)]
    with_query = feed("dns:query;ignoreAAAA", dns_record(), dns_record(qtypes=["AAAA"]))
    assert with_query["hubble_dns_queries_total"] == [
        ({"rcode": "", "qtypes": "A", "ips_returned": "0", "query": "api.example.test."}, 1.0)]


def test_l7_metric_options() -> None:
    assert parse_metrics("dns:query;ignoreAAAA")[0].flags == frozenset({"query", "ignoreAAAA"})
    assert parse_metrics("dns:IgnoreAAAA")[0].flags == frozenset({"ignoreAAAA"})  # upstream lower-cases keys
    with pytest.raises(MetricsOptionError, match="httpV2: option exemplars"):
        parse_metrics("httpV2:exemplars=true")
    with pytest.raises(MetricsOptionError, match="http: unknown option 'query'"):
        parse_metrics("http:query")


def test_l3_flows_do_not_feed_l7_metrics() -> None:
    metrics = FlowMetrics(parse_metrics("httpV2 dns"))
    metrics.process({"Type": "L3_L4", "verdict": "FORWARDED", "l4": {"TCP": {}}})
    got = scrape(metrics)
    assert "hubble_http_requests_total" not in got and "hubble_dns_queries_total" not in got


# ----- the agent's socket reader ------------------------------------------------------------------------------------
@pytest.fixture
def reader(tmp_path: Path) -> Iterator[AccessLogReader]:
    ring = FlowRing(16)
    r = AccessLogReader(tmp_path / "accesslog.sock", builder(), ring)
    r.open()
    try:
        yield r
    finally:
        r.stop()


def test_reader_turns_datagrams_into_flows_and_skips_bad_ones(reader: AccessLogReader,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    reader.start()
    assert oct(reader.path.stat().st_mode & 0o777) == "0o600"
    sender = AccessLogSender(reader.path)
    sender.send(http_record())
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as raw:
        raw.sendto(b'{"bogus": 1}', str(reader.path))
    sender.send(http_record("RESPONSE", code=200))
    sender.close()
    wait_for(lambda: reader.received == 3, 5, 0.02, "the reader did not receive three datagrams")
    assert reader.invalid == 1 and sender.lost == 0
    flows = reader.ring.last(10, _ALL)
    assert [f["l7"]["type"] for f in flows] == ["REQUEST", "RESPONSE"]
    assert "bogus" in caplog.text  # logged with the reason
    assert reader.handle(b"not json") is False and reader.invalid == 2


def test_records_sent_together_share_datagrams_and_each_becomes_a_flow(reader: AccessLogReader) -> None:
    reader.start()
    sender = AccessLogSender(reader.path)
    request, response = http_record().encode(), http_record("RESPONSE", code=200).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as tap:
        tap_path = reader.path.with_name("tap.sock")
        tap.bind(str(tap_path))
        tapped = AccessLogSender(tap_path)

        async def burst() -> None:
            for _ in range(3):
                sender.send_soon(request)
                sender.send_soon(response)
                tapped.send_soon(request)
            await asyncio.sleep(FLUSH_DELAY * 5)  # the queue goes out within FLUSH_DELAY
            big = b'{"x":"' + b"y" * 25000 + b'"}'
            for _ in range(5):  # five 25 kB records: no datagram over MAX_DATAGRAM
                tapped.send_soon(big)
            await asyncio.sleep(FLUSH_DELAY * 5)

        asyncio.run(burst())
        assert tap.recv(MAX_DATAGRAM + 1024) == b"\n".join([request] * 3)  # one datagram, three records
        sizes = [len(tap.recv(MAX_DATAGRAM + 1024)) for _ in range(3)]
        assert all(size <= MAX_DATAGRAM for size in sizes) and sum(sizes) == 5 * 25008 + 2
        assert tapped.sent == 8
    wait_for(lambda: reader.received == 6, 5, 0.02, "the reader did not get six records")
    assert reader.invalid == 0 and sender.sent == 6
    assert [f["l7"]["type"] for f in reader.ring.last(10, _ALL)] == ["REQUEST", "RESPONSE"] * 3
    assert reader.handle(request + b"\nnot json\n" + response) is False and reader.received == 9


class _All:
    @staticmethod
    def matches(_flow: object) -> bool:
        return True


_ALL: Any = _All()


# ----- cilia observe ----------------------------------------------------------------------------------------------
def test_observe_l7_flags() -> None:
    request = build_request(ObserveArgs(type=["l7"], http_method=["GET"], http_status=["403"],
                                        http_path=["^/v1/"]))
    (f,) = request.whitelist
    assert [t.type for t in f.event_type] == [129]
    assert (list(f.http_method), list(f.http_status_code), list(f.http_path)) == (["GET"], ["403"], ["^/v1/"])
    trace = build_request(ObserveArgs(type=["trace:to-endpoint"])).whitelist[0].event_type[0]
    assert (trace.type, trace.match_sub_type, trace.sub_type) == (4, True, 0)
    with pytest.raises(ObserveArgumentError, match="--type"):
        build_request(ObserveArgs(type=["bogus"]))
    with pytest.raises(ObserveArgumentError, match="--fqdn"):
        build_request(ObserveArgs(fqdn=["a b"]))


def test_observe_fqdn_matches_names_or_the_dns_query() -> None:
    request = build_request(ObserveArgs(fqdn=["api.example.test"]))
    assert len(request.whitelist) == 3
    filters = FlowFilters(request.whitelist, [])
    assert filters.matches(FLOWS["dns"]) and not filters.matches(FLOWS["req"])
    other = FlowFilters(build_request(ObserveArgs(fqdn=["*.cdn.example.test"])).whitelist, [])
    assert not other.matches(FLOWS["dns"])
    cdn = pb(replace(dns_record(), dns=DnsRecord("x.cdn.example.test.", ["A"])))
    assert other.matches(cdn)
    named = flow_pb2.Flow()
    named.destination_names.append("api.example.test")
    assert filters.matches(named)


def test_observe_compact_line_for_l7() -> None:
    line = compact_line(FLOWS["denied"])
    assert "default/deathstar:80 (ID:301) -> default/tiefighter:40000 (ID:300) http-response DROPPED " \
           "(HTTP/1.1 403 0ms (PUT http://deathstar/v1/exhaust-port))" in line
    assert "dns-request FORWARDED (DNS Query api.example.test. A)" in compact_line(FLOWS["dns"])


def test_l7_flows_are_policy_verdicts() -> None:
    """Upstream's policy handler counts every L7 flow with match l7/<protocol>."""
    got = feed("policy", http_record(), http_record("RESPONSE", "DROPPED", 403), dns_record())
    assert sorted((s["direction"], s["match"], s["action"], v) for s, v in got["hubble_policy_verdicts_total"]) == [
        ("egress", "l7/dns", "forwarded", 1.0), ("ingress", "l7/http", "dropped", 1.0),
        ("ingress", "l7/http", "forwarded", 1.0)]


def test_allowed_dns_answers_feed_the_dns_history(tmp_path: Path) -> None:
    from cilia.fqdn.history import DnsHistory

    history = DnsHistory(None)
    reader = AccessLogReader(tmp_path / "accesslog.sock", builder(), FlowRing(8), history)
    reader.handle(dns_record("REQUEST").encode())
    reader.handle(dns_record("RESPONSE", "DROPPED", ips=["198.51.100.9"]).encode())
    reader.handle(dns_record("RESPONSE", ips=["198.51.100.10", "2001:db8:100::a"], cnames=["edge.example.test."]
                             ).encode())
    assert history.names_of(11, "198.51.100.10") == ["api.example.test", "edge.example.test"]
    assert history.names_of(11, "2001:db8:100::a") == ["api.example.test", "edge.example.test"]
    assert history.names_of(11, "198.51.100.9") == [] and history.names_of(12, "198.51.100.10") == []
