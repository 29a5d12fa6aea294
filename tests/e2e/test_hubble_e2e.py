"""Hubble's Observer API on a running lab agent, read with a gRPC client generated from our .proto
over /run/cilia/n1/hubble.sock, as `hubble observe --server unix://...` reads it: a policy denies
client -> web, and the drop, its reason, its pods and the policy verdict come back through
GetFlows with the filters the hubble CLI sends for its flags; follow sees a new probe."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cilia.hubble.pb import flow_pb2, observer_pb2, observer_pb2_grpc, relay_pb2
from cilia.lab.lab import Lab
from cilia.paths import NodePaths
from cilia.testing import wait_for
from cilia.testing.labs import client_denied_to_web

FF = flow_pb2.FlowFilter


@pytest.fixture(scope="module")
def denied(lab: Lab) -> Iterator[Lab]:
    """The lab with web reachable on 80 from team-a/db only: client's probe is default-denied."""
    with client_denied_to_web(lab) as running:
        yield running


@pytest.fixture(scope="module")
def channel(denied: Lab) -> Iterator[grpc.Channel]:
    socket = NodePaths("n1").hubble_socket
    assert socket.exists(), f"{socket} missing: the agent serves no Hubble API"
    with grpc.insecure_channel(f"unix://{socket}") as ch:
        yield ch


def observer(channel: grpc.Channel) -> Any:
    return observer_pb2_grpc.ObserverStub(channel)  # type: ignore[no-untyped-call]


def flows(channel: grpc.Channel, **request: Any) -> list[flow_pb2.Flow]:
    responses = observer(channel).GetFlows(observer_pb2.GetFlowsRequest(**request), timeout=10)
    return [r.flow for r in responses if r.HasField("flow")]


def test_health_and_server_status(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
    check = health.Check(health_pb2.HealthCheckRequest(service="hubble.server.Observer"), timeout=5)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    status = observer(channel).ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
    assert status.num_flows > 0 and status.seen_flows >= status.num_flows
    assert status.max_flows == 4096 and status.uptime_ns > 0 and status.version.startswith("cilia")


def test_last_20(channel: grpc.Channel) -> None:
    last = flows(channel, number=20)
    assert 0 < len(last) <= 20
    assert all(f.node_name == "n1" and f.HasField("time") for f in last)
    times = [f.time.ToNanoseconds() for f in last]
    # ring order is arrival order; events stamped on different CPUs may cross by a little
    assert all(later >= earlier - 10**7 for earlier, later in itertools.pairwise(times))


def test_dropped_flows_name_reason_pods_and_direction(channel: grpc.Channel) -> None:
    dropped = flows(channel, number=100, whitelist=[FF(verdict=[flow_pb2.DROPPED])])
    drops = [f for f in dropped if f.event_type.type == 1]
    assert drops, f"no drop among {len(dropped)} dropped flows"
    drop = drops[-1]
    assert drop.drop_reason_desc == flow_pb2.POLICY_DENIED and drop.drop_reason == 133
    assert drop.event_type.sub_type == 133
    assert (drop.source.namespace, drop.source.pod_name) == ("default", "client")
    assert (drop.destination.namespace, drop.destination.pod_name) == ("default", "web")
    assert "k8s:app=client" in drop.source.labels and drop.source.identity > 0
    assert drop.traffic_direction == flow_pb2.INGRESS and drop.l4.TCP.destination_port == 80
    assert drop.IP.ipVersion in (flow_pb2.IPv4, flow_pb2.IPv6) and drop.Type == flow_pb2.L3_L4
    # hubble observe --type policy-verdict --verdict DROPPED: the denied verdict for the same connection
    verdicts = flows(channel, number=100, whitelist=[FF(verdict=[flow_pb2.DROPPED],
                                                        event_type=[flow_pb2.EventTypeFilter(type=5)])])
    assert any(v.destination.pod_name == "web" and v.source.pod_name == "client" for v in verdicts)


def test_cli_flag_filters(channel: grpc.Channel) -> None:
    # --pod default/client (source OR destination), --protocol tcp, --port 80, --from-label, --since 1m
    pod = [FF(source_pod=["default/client"], protocol=["tcp"]),
           FF(destination_pod=["default/client"], protocol=["tcp"])]
    got = flows(channel, number=50, whitelist=pod)
    assert got and all("client" in (f.source.pod_name, f.destination.pod_name) for f in got)
    assert all(f.l4.WhichOneof("protocol") == "TCP" for f in got)
    port = flows(channel, number=50, whitelist=[FF(source_port=["80"]), FF(destination_port=["80"])])
    assert port and all(80 in (f.l4.TCP.source_port, f.l4.TCP.destination_port) for f in port)
    label = flows(channel, number=50, whitelist=[FF(source_label=["k8s:app=db"])])
    assert label and all(f.source.pod_name == "db" for f in label)
    since = Timestamp()
    since.FromNanoseconds(time.time_ns() - 60 * 10**9)
    recent = flows(channel, since=since)
    assert recent and all(f.time.ToNanoseconds() >= since.ToNanoseconds() for f in recent)
    # --namespace team-a: source_pod ["team-a/"] OR destination_pod ["team-a/"]
    team_a = flows(channel, number=50, whitelist=[FF(source_pod=["team-a/"]), FF(destination_pod=["team-a/"])])
    assert team_a and all("team-a" in (f.source.namespace, f.destination.namespace) for f in team_a)
    not_dropped = flows(channel, number=50, blacklist=[FF(verdict=[flow_pb2.DROPPED])])
    assert not_dropped and all(f.verdict != flow_pb2.DROPPED for f in not_dropped)


def test_follow_sees_a_new_probe(channel: grpc.Channel, denied: Lab) -> None:
    request = observer_pb2.GetFlowsRequest(follow=True, whitelist=[
        FF(source_pod=["default/client"], destination_pod=["default/web"], verdict=[flow_pb2.DROPPED])])
    stream = observer(channel).GetFlows(request, timeout=30)
    got: list[flow_pb2.Flow] = []

    def read() -> None:
        try:
            for response in stream:
                if response.HasField("flow"):
                    got.append(response.flow)
                    return
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read)
    reader.start()
    started = time.time_ns()

    def followed() -> bool:
        denied.probe("client", "web", 80, timeout=0.5)  # again until the follower has one: bounded
        reader.join(1.0)
        return bool(got)

    try:
        wait_for(followed, 15, 0, "no followed flow of new probes")
    finally:
        stream.cancel()
        reader.join(5)
    assert got[0].time.ToNanoseconds() >= started - 10**9 and got[0].verdict == flow_pb2.DROPPED


def test_nodes_namespaces_and_events(channel: grpc.Channel) -> None:
    nodes = observer(channel).GetNodes(observer_pb2.GetNodesRequest(), timeout=5).nodes
    assert [(n.name, n.state) for n in nodes] == [("n1", relay_pb2.NODE_CONNECTED)]
    namespaces = {n.namespace for n in observer(channel).GetNamespaces(observer_pb2.GetNamespacesRequest(),
                                                                        timeout=5).namespaces}
    assert {"default", "team-a"} <= namespaces
    # the agent's events since it started: its start, the lab's pods created, the policy the
    # fixture applied, the regenerations it caused (Hubble's AgentEventType values and messages)
    events = [e.agent_event for e in observer(channel).GetAgentEvents(observer_pb2.GetAgentEventsRequest(),
                                                                       timeout=5)]
    assert events and events[0].type == flow_pb2.AGENT_STARTED and events[0].agent_start.time.seconds > 0
    created = {e.endpoint_update.pod_name for e in events if e.type == flow_pb2.ENDPOINT_CREATED}
    assert {"client", "web", "db"} <= created
    policies = [e.policy_update for e in events if e.type == flow_pb2.POLICY_UPDATED]
    assert any("k8s:io.cilium.k8s.policy.name=web-from-db" in p.labels and p.revision > 0 and p.rule_count == 1
               for p in policies), policies
    assert any(e.type == flow_pb2.ENDPOINT_REGENERATE_SUCCESS and e.endpoint_regenerate.id > 0 for e in events)
    last = list(observer(channel).GetAgentEvents(observer_pb2.GetAgentEventsRequest(number=2), timeout=5))
    assert len(last) == 2 and last[-1].agent_event == events[-1]
    assert list(observer(channel).GetDebugEvents(observer_pb2.GetDebugEventsRequest(number=5), timeout=5)) == []
