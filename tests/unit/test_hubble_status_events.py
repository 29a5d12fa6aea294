"""ServerStatus' flows_rate, GetNamespaces and GetAgentEvents with upstream's semantics: the rate
over the buffered flows of the last minute (since the oldest when all are that recent), the
namespaces of the last hour remembered after their flows left the buffer (cluster empty in the
default cluster), the agent's events with Hubble's AgentEventType values and messages, over a
real gRPC socket with our generated client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from cilia.flows.ring import FlowRing
from cilia.hubble import agent_events as ae
from cilia.hubble.namespaces import NamespaceTracker
from cilia.hubble.pb import flow_pb2, observer_pb2, observer_pb2_grpc
from cilia.hubble.rate import flow_time_ns, flows_rate
from cilia.hubble.server import HubbleConfig, HubbleServer
from cilia.testing import wait_for

S = 10**9


def stamp(ns: int) -> str:
    t = Timestamp()
    t.FromNanoseconds(ns)
    return t.ToJsonString()


def flow(at_ns: int, namespace: str = "x", uuid: str = "") -> dict[str, Any]:
    return {"time": stamp(at_ns), "uuid": uuid or f"u-{at_ns}", "verdict": "FORWARDED", "Type": "L3_L4",
            "node_name": "n1", "event_type": {"type": 4}, "source": {"namespace": namespace, "pod_name": "a"},
            "destination": {"namespace": "y", "pod_name": "b"}}


class Built:
    def __init__(self, value: dict[str, Any] | None) -> None:
        self.value = value
        self.calls = 0

    def get(self) -> dict[str, Any] | None:
        self.calls += 1
        return self.value


# ----- flows_rate -------------------------------------------------------------------------------
def test_flow_times_parse_to_the_nanosecond() -> None:
    assert flow_time_ns({"time": "2026-12-01T12:00:00.123456789Z"}) == 1796126400 * S + 123456789
    assert flow_time_ns({"time": "2026-12-01T12:00:00.5Z"}) == 1796126400 * S + 500_000_000
    assert flow_time_ns({"time": "2026-12-01T12:00:00Z"}) == 1796126400 * S
    assert flow_time_ns({"time": "2026-12-01T12:00:00.000001+00:00"}) == 1796126400 * S + 1000
    assert flow_time_ns({"time": "yesterday"}) is None and flow_time_ns({}) is None


def test_rate_is_the_last_minutes_flows_per_second() -> None:
    now = 1_000 * S
    # 300 flows over the last 5 minutes, one a second: 60 of them in the last minute
    entries = [Built(flow(now - (300 - i) * S)) for i in range(300)]
    assert flows_rate(entries, now) == pytest.approx(60 / 60)
    assert sum(e.calls for e in entries) < 40  # a binary search, not a walk over every flow


def test_rate_since_the_oldest_when_all_are_recent() -> None:
    now = 1_000 * S
    entries = [Built(flow(now - 10 * S + i * S)) for i in range(10)]  # 10 flows over the last 10 s
    assert flows_rate(entries, now) == pytest.approx(10 / 10)
    assert flows_rate([], now) == 0.0
    assert flows_rate([Built(flow(now - 120 * S))], now) == 0.0  # nothing in the last minute
    # an entry that does not build takes its neighbour's time
    assert flows_rate([Built(None), *entries], now) == pytest.approx(11 / 10)


def test_server_status_reports_the_buffered_rate(tmp_path: Path) -> None:
    ring = FlowRing(64)
    now = time.time_ns()
    for i in range(30):
        ring.add(flow(now - 30 * S + i * S, uuid=f"r{i}"))  # 30 flows over the last 30 s
    server = HubbleServer(HubbleConfig("n1", tmp_path / "h.sock", 64), ring)
    server.start()
    try:
        with grpc.insecure_channel(f"unix://{server.config.socket}") as channel:
            status = stub(channel).ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
    finally:
        server.stop()
    assert status.flows_rate == pytest.approx(1.0, rel=0.1)


# ----- namespaces -------------------------------------------------------------------------------
def test_namespaces_are_kept_an_hour_after_they_were_last_seen() -> None:
    now = [10_000 * S]
    tracker = NamespaceTracker(clock=lambda: now[0])
    tracker.consume(flow(0, "team-a"))
    now[0] += 1800 * S
    tracker.consume({"source": {"namespace": "team-b"}, "destination": {}})
    assert [(n.cluster, n.namespace) for n in tracker.namespaces()] == [("", "team-a"), ("", "team-b"), ("", "y")]
    now[0] += 1801 * S  # team-a and y last seen more than an hour ago
    assert [n.namespace for n in tracker.namespaces()] == ["team-b"]
    old = flow_pb2.Flow()
    old.time.FromNanoseconds(now[0] - 7200 * S)
    old.source.namespace = "ancient"
    tracker.add_flows([old])
    assert [n.namespace for n in tracker.namespaces()] == ["team-b"]  # seen at its flow's time


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[HubbleServer, FlowRing, ae.AgentEventLog]]:
    ring = FlowRing(4)
    events = ae.AgentEventLog()
    server = HubbleServer(HubbleConfig("n1", tmp_path / "h.sock", 4), ring, events=events)
    server.start()
    try:
        yield server, ring, events
    finally:
        server.stop()


def stub(channel: grpc.Channel) -> Any:
    return observer_pb2_grpc.ObserverStub(channel)  # type: ignore[no-untyped-call]


def test_get_namespaces_remembers_namespaces_whose_flows_left_the_buffer(
        served: tuple[HubbleServer, FlowRing, ae.AgentEventLog]) -> None:
    server, ring, _ = served
    now = time.time_ns()
    ring.add(flow(now, "gone-soon", uuid="g"))
    wait_for(lambda: "gone-soon" in {n.namespace for n in server.namespaces.namespaces()}, 5, 0.05,
             "the namespace tap did not see the flow")
    for i in range(8):  # the 4-flow buffer forgets it
        ring.add(flow(now + i, "kept", uuid=f"k{i}"))
    with grpc.insecure_channel(f"unix://{server.config.socket}") as channel:
        namespaces = stub(channel).GetNamespaces(observer_pb2.GetNamespacesRequest(), timeout=5).namespaces
    assert [(n.cluster, n.namespace) for n in namespaces] == [("", "gone-soon"), ("", "kept"), ("", "y")]


# ----- agent events -----------------------------------------------------------------------------
def test_agent_event_messages_use_upstreams_types() -> None:
    assert (flow_pb2.AGENT_STARTED, flow_pb2.POLICY_UPDATED, flow_pb2.POLICY_DELETED,
            flow_pb2.ENDPOINT_REGENERATE_SUCCESS, flow_pb2.ENDPOINT_REGENERATE_FAILURE, flow_pb2.ENDPOINT_CREATED,
            flow_pb2.ENDPOINT_DELETED) == (2, 3, 4, 5, 6, 7, 8)
    policy = {"kind": "CiliumNetworkPolicy", "metadata": {"name": "web", "namespace": "team-a", "uid": "u1"},
              "specs": [{}, {}]}
    event = ae.policy_event(False, policy, 7)
    assert event.type == flow_pb2.POLICY_UPDATED and event.WhichOneof("notification") == "policy_update"
    assert list(event.policy_update.labels) == [
        "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy", "k8s:io.cilium.k8s.policy.name=web",
        "k8s:io.cilium.k8s.policy.namespace=team-a", "k8s:io.cilium.k8s.policy.uid=u1"]
    assert (event.policy_update.revision, event.policy_update.rule_count) == (7, 2)
    clusterwide = ae.policy_event(True, {"kind": "CiliumClusterwideNetworkPolicy", "metadata": {"name": "all"},
                                         "spec": {}}, 8)
    assert clusterwide.type == flow_pb2.POLICY_DELETED and clusterwide.policy_update.rule_count == 1
    assert not any("namespace" in label for label in clusterwide.policy_update.labels)
    assert ae.rule_count({"kind": "NetworkPolicy", "spec": {}}) == 1
    failed = ae.regeneration_event(12, ["k8s:app=web"], "map full")
    assert failed.type == flow_pb2.ENDPOINT_REGENERATE_FAILURE
    assert (failed.endpoint_regenerate.id, failed.endpoint_regenerate.error) == (12, "map full")
    assert ae.regeneration_event(12, [], "").type == flow_pb2.ENDPOINT_REGENERATE_SUCCESS
    created = ae.endpoint_event(True, 12, ["k8s:app=web"], "web", "default")
    assert created.type == flow_pb2.ENDPOINT_CREATED and created.endpoint_update.pod_name == "web"
    assert created.endpoint_update.namespace == "default" and list(created.endpoint_update.labels) == ["k8s:app=web"]


class Endpoint:
    def __init__(self, endpoint_id: int, pod: str) -> None:
        self.id, self.pod_name, self.pod_namespace = endpoint_id, pod, "default"
        self.identity_labels = [f"k8s:app={pod}"]


def test_the_recorder_turns_hooks_into_events() -> None:
    log = ae.AgentEventLog()
    endpoints = [Endpoint(1, "restored")]
    recorder = ae.AgentEventRecorder(log, lambda: list(endpoints), lambda: 42, lambda o: o.get("kind") == "CNP")
    recorder.on_endpoints_changed()
    assert log.snapshot() == []  # what was there at the start is not "created"
    endpoints.append(Endpoint(2, "web"))
    recorder.on_endpoints_changed()
    recorder.on_regeneration(2, 0.01, "")
    del endpoints[0]
    recorder.on_endpoints_changed()
    recorder.on_resource_event("ADDED", {"kind": "CNP", "metadata": {"name": "p"}, "spec": {}}, None)
    recorder.on_resource_event("ADDED", {"kind": "Pod", "metadata": {"name": "x"}}, None)
    recorder.on_resource_event("DELETED", {"kind": "CNP", "metadata": {"name": "p"}, "spec": {}}, None)
    got = [(r.event.type, r.event.WhichOneof("notification")) for r in log.snapshot()]
    assert got == [(flow_pb2.ENDPOINT_CREATED, "endpoint_update"), (flow_pb2.ENDPOINT_REGENERATE_SUCCESS,
                                                                    "endpoint_regenerate"),
                   (flow_pb2.ENDPOINT_DELETED, "endpoint_update"), (flow_pb2.POLICY_UPDATED, "policy_update"),
                   (flow_pb2.POLICY_DELETED, "policy_update")]
    regen = log.snapshot()[1].event.endpoint_regenerate
    assert (regen.id, list(regen.labels)) == (2, ["k8s:app=web"])
    assert log.snapshot()[3].event.policy_update.revision == 42


def request(**fields: Any) -> observer_pb2.GetAgentEventsRequest:
    return observer_pb2.GetAgentEventsRequest(**fields)


def test_history_selection_as_hubbles_ring_reader() -> None:
    events = [ae.Recorded(i * S, ae.agent_started(i * S)) for i in range(6)]

    def pick(**fields: Any) -> list[int]:
        return [r.time_ns // S for r in ae.select(events, request(**fields))]

    def at(seconds: int) -> Timestamp:
        t = Timestamp()
        t.FromNanoseconds(seconds * S)
        return t

    assert pick(number=2) == [4, 5]
    assert pick(number=2, first=True) == [0, 1]
    assert pick() == [0, 1, 2, 3, 4, 5]
    assert pick(follow=True) == []
    assert pick(number=2, follow=True) == [4, 5]
    assert pick(since=at(2), number=2) == [2, 3]  # since takes precedence, number caps forward
    assert pick(since=at(2), number=2, follow=True) == [2, 3, 4, 5]
    assert pick(since=at(2), until=at(3)) == [2, 3]
    assert pick(number=3, until=at(4)) == [3, 4]


def test_get_agent_events_over_grpc(served: tuple[HubbleServer, FlowRing, ae.AgentEventLog]) -> None:
    server, _, events = served
    events.record(ae.agent_started(time.time_ns()))
    events.record(ae.endpoint_event(True, 5, ["k8s:app=web"], "web", "default"))
    with grpc.insecure_channel(f"unix://{server.config.socket}") as channel:
        replies = list(stub(channel).GetAgentEvents(request(number=10), timeout=5))
        assert [r.agent_event.type for r in replies] == [flow_pb2.AGENT_STARTED, flow_pb2.ENDPOINT_CREATED]
        assert all(r.node_name == "n1" and r.time.seconds > 0 for r in replies)
        with pytest.raises(grpc.RpcError) as info:
            list(stub(channel).GetAgentEvents(request(first=True, follow=True), timeout=5))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        stream = stub(channel).GetAgentEvents(request(follow=True), timeout=10)
        got: list[observer_pb2.GetAgentEventsResponse] = []
        reader = threading.Thread(target=lambda: got.append(next(stream)), daemon=True)
        reader.start()
        try:
            def sent() -> bool:  # until the follower has subscribed, an event may precede it: resend
                events.record(ae.regeneration_event(5, ["k8s:app=web"], ""))
                return bool(got)
            wait_for(sent, 5, 0.1, "the follower got no new agent event")
        finally:
            stream.cancel()
        assert got[0].agent_event.type == flow_pb2.ENDPOINT_REGENERATE_SUCCESS
        assert got[0].agent_event.endpoint_regenerate.id == 5
        # debug events: cilia's datapath emits none; the stream ends (or stays open when following)
        assert list(stub(channel).GetDebugEvents(observer_pb2.GetDebugEventsRequest(number=5), timeout=5)) == []


# ----- GetFlows history: first vs last, since/until with number --------------------------------
def upstream_history(times: list[int], matching: list[bool], number: int, first: bool, follow: bool,
                     since: int | None, until: int | None) -> list[int]:
    """A model of Hubble's newRingReader (rewind) + eventsReader (forward) over a buffer in time
    order: the indexes a GetFlows request is sent before it follows."""
    n = len(times)
    if first and since is None:
        start = 0
    elif follow and number == 0 and since is None:
        start = n
    else:
        start, count = 0, 0
        for i in range(n - 1, -1, -1):
            if not matching[i]:
                continue
            count += 1
            if since is not None:
                if times[i] < since:
                    start = i + 1
                    break
            elif count == number:
                start = i
                break
    out: list[int] = []
    for i in range(start, n):
        if not follow and number and len(out) >= number:
            break
        if until is not None and times[i] > until:
            break  # the first flow past until ends the reading, matching or not
        if since is not None and times[i] < since:
            continue
        if matching[i]:
            out.append(i)
    return out


def test_select_history_is_hubbles_ring_reader() -> None:
    for seed in range(500):  # random buffers and requests, reproducible
        check_history(seed)


def check_history(seed: int) -> None:
    import random

    from cilia.hubble.filters import FlowFilters
    from cilia.hubble.server import select_history

    rng = random.Random(seed)
    n = rng.randrange(0, 12)
    times = sorted(rng.randrange(0, 8) for _ in range(n))  # in time order, with ties
    matching = [rng.random() < 0.6 for _ in range(n)]
    flows = []
    for i, (t, match) in enumerate(zip(times, matching, strict=True)):
        f = flow_pb2.Flow(uuid=str(i), verdict=flow_pb2.FORWARDED if match else flow_pb2.DROPPED)
        f.time.FromNanoseconds(T0_NS + t * S)
        flows.append(f)
    number = rng.choice([0, 0, 1, 2, 3, 5, 20])
    first = rng.random() < 0.3
    follow = not first and rng.random() < 0.3
    since = rng.choice([None, None, rng.randrange(0, 8)])
    until = None if follow else rng.choice([None, None, rng.randrange(0, 8)])
    fields: dict[str, Any] = {"number": number, "first": first, "follow": follow}
    if since is not None:
        fields["since"] = Timestamp(seconds=T0_NS // S + since)
    if until is not None:
        fields["until"] = Timestamp(seconds=T0_NS // S + until)
    wanted = FlowFilters([flow_pb2.FlowFilter(verdict=[flow_pb2.FORWARDED])], [])
    got = [int(f.uuid) for f in select_history(flows, observer_pb2.GetFlowsRequest(**fields), wanted)]
    assert got == upstream_history(times, matching, number, first, follow, since, until), (seed, fields)


T0_NS = 1_700_000_000 * S
