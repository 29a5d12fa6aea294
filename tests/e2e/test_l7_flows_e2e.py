"""L7 flows on the lab: requests through cilia-proxy show up as Hubble L7 flows.

The Star Wars lab of test_l7_policy_e2e (its fixture): a tiefighter's `PUT /v1/exhaust-port` is
denied by the proxy; its request is a DROPPED L7 flow (as in Cilium, a denied request's only
record) the agent makes from the proxy's access log, read through the Observer API with Hubble's
http filters and with `cilia observe --type l7 --http-method ... --http-path ...`; an allowed
request's FORWARDED request and 200 response flows, with `--http-status`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import grpc

from cilia.hubble.pb import flow_pb2, observer_pb2, observer_pb2_grpc
from cilia.lab.lab import PYTHON, Lab
from cilia.paths import NodePaths
from cilia.testing import wait_for
from tests.e2e.test_l7_policy_e2e import lab, requests

__all__ = ["lab"]  # the Star Wars lab fixture, shared with test_l7_policy_e2e
FF = flow_pb2.FlowFilter
L7 = flow_pb2.EventTypeFilter(type=129)


def get_flows(*whitelist: flow_pb2.FlowFilter) -> list[flow_pb2.Flow]:
    with grpc.insecure_channel(f"unix://{NodePaths('n1').hubble_socket}") as channel:
        stub: Any = observer_pb2_grpc.ObserverStub(channel)  # type: ignore[no-untyped-call]
        request = observer_pb2.GetFlowsRequest(number=1000, whitelist=list(whitelist))
        return [r.flow for r in stub.GetFlows(request, timeout=10) if r.HasField("flow")]


def observe(*flags: str) -> list[dict[str, Any]]:
    out = subprocess.run([str(Path(PYTHON).with_name("cilia")), "observe", "--node", "n1", "--last", "1000",
                          "-o", "json", *flags], capture_output=True, text=True, timeout=30, check=True)
    return [json.loads(line)["flow"] for line in out.stdout.splitlines() if line.strip()]


def test_denied_request_is_a_dropped_l7_flow(lab: Lab) -> None:
    tiefighter, deathstar = lab.address_of("tiefighter"), lab.address_of("deathstar")
    assert [r[:2] for r in requests(lab, "tiefighter", [("PUT", "/v1/exhaust-port")])] == [[403, "Access denied"]]
    # Hubble's filters over gRPC: the denied request, by method (case-insensitive), path regex, verdict
    found = wait_for(lambda: get_flows(FF(event_type=[L7], http_method=["put"], http_path=["^/v1/exhaust"],
                                          verdict=[flow_pb2.DROPPED], source_pod=["default/tiefighter"])),
                     10, 0.2, "no DROPPED L7 flow for PUT /v1/exhaust-port")
    request = found[-1]
    assert request.Type == flow_pb2.L7 and request.event_type.type == 129 and request.l7.type == flow_pb2.REQUEST
    assert request.is_reply.value is False and request.HasField("is_reply")
    assert request.IP.source == tiefighter and request.IP.destination == deathstar
    assert request.l4.TCP.destination_port == 80 and request.traffic_direction == flow_pb2.INGRESS
    assert (request.source.pod_name, request.destination.pod_name) == ("tiefighter", "deathstar")
    assert request.source.identity and request.destination.labels  # resolved like the datapath's flows
    assert (request.l7.http.method, request.l7.http.protocol, request.l7.http.code) == ("PUT", "HTTP/1.1", 0)
    assert request.l7.http.url == f"http://{deathstar}/v1/exhaust-port"
    assert request.Summary == f"HTTP/1.1 PUT http://{deathstar}/v1/exhaust-port"
    assert any(h.key == "Host" for h in request.l7.http.headers) and request.node_name == "n1"
    # filters that exclude it: another method, a forwarded verdict
    assert get_flows(FF(event_type=[L7], http_method=["DELETE"])) == []
    assert [f for f in get_flows(FF(event_type=[L7], http_path=["exhaust"], verdict=[flow_pb2.FORWARDED]))] == []

    # the same through cilia observe (the same gRPC service)
    seen = observe("--type", "l7", "--http-method", "PUT", "--verdict", "DROPPED", "--http-path", "^/v1/exhaust",
                   "--pod", "default/tiefighter")
    assert seen and {f["l7"]["type"] for f in seen} == {"REQUEST"}
    assert seen[-1]["Type"] == "L7" and seen[-1]["event_type"]["type"] == 129
    assert seen[-1]["l7"]["http"]["url"] == f"http://{deathstar}/v1/exhaust-port"
    compact = subprocess.run([str(Path(PYTHON).with_name("cilia")), "observe", "--node", "n1", "--type", "l7",
                              "--http-method", "PUT"], capture_output=True, text=True, timeout=30, check=True)
    assert "http-request DROPPED (HTTP/1.1 PUT http://" in compact.stdout
    refused = subprocess.run([str(Path(PYTHON).with_name("cilia")), "observe", "--node", "n1", "--type", "drop",
                              "--http-method", "PUT"], capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "INVALID_ARGUMENT" in refused.stderr + refused.stdout
    assert "requires the event type filter to only match 'l7' events" in refused.stderr + refused.stdout


def test_allowed_request_is_forwarded_l7_flow(lab: Lab) -> None:
    result = requests(lab, "tiefighter", [("POST", "/v1/request-landing")])
    assert result[0][:1] == [200], result
    deathstar = lab.address_of("deathstar")
    responses = wait_for(lambda: get_flows(FF(event_type=[L7], http_status_code=["2+"], http_method=["POST"],
                                              source_ip=[deathstar])), 10, 0.2, "no L7 2xx response flow")
    response = responses[-1]
    assert response.verdict == flow_pb2.FORWARDED and response.l7.type == flow_pb2.RESPONSE
    assert response.is_reply.value is True and response.l7.http.code == 200
    assert (response.source.pod_name, response.destination.pod_name) == ("deathstar", "tiefighter")
    assert response.l7.http.url == f"http://{deathstar}/v1/request-landing"
    assert response.Summary.startswith("HTTP/1.1 200 ") and response.Summary.endswith(
        f"(POST http://{deathstar}/v1/request-landing)")
    assert [p.name for p in response.ingress_allowed_by] == ["rule1"]  # the rule that allowed it
    forwarded = get_flows(FF(event_type=[L7], http_method=["POST"], verdict=[flow_pb2.FORWARDED]))
    assert {f.l7.type for f in forwarded} >= {flow_pb2.REQUEST, flow_pb2.RESPONSE}
    assert get_flows(FF(event_type=[L7], http_status_code=["4+"], http_method=["POST"])) == []
    seen = observe("--type", "l7", "--http-method", "POST", "--http-status", "200")
    assert seen and all(f["l7"]["http"]["code"] == 200 for f in seen)
