"""The Observer server over a real gRPC unix socket (and TCP on loopback, plaintext and TLS),
with a client generated from our .proto: history selection, follow, filters, status RPCs; each
against both server implementations (cilia's own HTTP/2 one and grpcio's)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cilia.flows.ring import FlowRing
from cilia.hubble.h2server import IMPLEMENTATIONS
from cilia.hubble.pb import flow_pb2, observer_pb2, observer_pb2_grpc, relay_pb2
from cilia.hubble.server import HEALTH_SERVICE, HubbleConfig, HubbleServer, TlsFiles
from cilia.testing import wait_for

CAPACITY = 16
T0 = (time.time_ns() // 10**9 - 7200) * 10**9  # two hours ago: history, but not "the last hour"


def flow(i: int, verdict: str = "FORWARDED", namespace: str = "x", at_ns: int | None = None) -> dict[str, Any]:
    stamp = Timestamp()
    stamp.FromNanoseconds(at_ns if at_ns is not None else T0 + i * 10**9)
    return {"time": stamp.ToJsonString(), "uuid": f"uuid-{i}", "verdict": verdict, "Type": "L3_L4",
            "node_name": "n1", "event_type": {"type": 1 if verdict == "DROPPED" else 4},
            "drop_reason": 133 if verdict == "DROPPED" else 0, "traffic_direction": "INGRESS",
            "IP": {"source": "10.0.0.1", "destination": f"10.0.1.{i}", "ipVersion": "IPv4"},
            "l4": {"TCP": {"source_port": 40000 + i, "destination_port": 80, "flags": {"SYN": True}}},
            "source": {"ID": 1, "identity": 256, "namespace": namespace, "pod_name": "client", "labels": []},
            "destination": {"ID": 2, "identity": 257, "namespace": "y", "pod_name": f"server-{i}", "labels": []},
            "Summary": f"flow {i}"}


@pytest.fixture
def ring() -> FlowRing:
    r = FlowRing(CAPACITY)
    for i in range(5):
        r.add(flow(i, "DROPPED" if i == 3 else "FORWARDED"))
    return r


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(ring: FlowRing, tmp_path: Path, impl: str) -> Iterator[HubbleServer]:
    s = HubbleServer(HubbleConfig("n1", tmp_path / "hubble.sock", CAPACITY, "127.0.0.1:0", server_impl=impl), ring)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def channel(server: HubbleServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"unix://{server.config.socket}") as ch:
        yield ch


def stub(channel: grpc.Channel) -> Any:
    return observer_pb2_grpc.ObserverStub(channel)  # type: ignore[no-untyped-call]


def get_flows(channel: grpc.Channel, **request: Any) -> list[observer_pb2.GetFlowsResponse]:
    return list(stub(channel).GetFlows(observer_pb2.GetFlowsRequest(**request), timeout=5))


def uuids(responses: list[observer_pb2.GetFlowsResponse]) -> list[str]:
    return [r.flow.uuid for r in responses]


def test_health_and_status(channel: grpc.Channel, server: HubbleServer) -> None:
    health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
    reply = health.Check(health_pb2.HealthCheckRequest(service=HEALTH_SERVICE), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    status = stub(channel).ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
    assert (status.num_flows, status.max_flows, status.seen_flows) == (5, CAPACITY, 5)
    assert status.uptime_ns > 0 and status.version.startswith("cilia v")
    assert not status.HasField("num_connected_nodes") and not status.HasField("num_unavailable_nodes")
    assert server.config.socket.stat().st_mode & 0o777 == 0o600


def test_last_first_and_filters(channel: grpc.Channel) -> None:
    assert uuids(get_flows(channel, number=2)) == ["uuid-3", "uuid-4"]
    assert uuids(get_flows(channel, number=2, first=True)) == ["uuid-0", "uuid-1"]
    assert uuids(get_flows(channel, number=0)) == [f"uuid-{i}" for i in range(5)]
    dropped = get_flows(channel, number=20, whitelist=[flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED])])
    assert uuids(dropped) == ["uuid-3"]
    assert dropped[0].flow.drop_reason_desc == flow_pb2.POLICY_DENIED
    assert dropped[0].node_name == "n1" and dropped[0].time == dropped[0].flow.time
    kept = get_flows(channel, number=20, blacklist=[flow_pb2.FlowFilter(destination_pod=["y/server-1"])])
    assert uuids(kept) == ["uuid-0", "uuid-2", "uuid-3", "uuid-4"]


def test_since_until_and_field_mask(channel: grpc.Channel) -> None:
    since, until = Timestamp(), Timestamp()
    since.FromNanoseconds(T0 + 2 * 10**9)
    until.FromNanoseconds(T0 + 3 * 10**9)
    assert uuids(get_flows(channel, since=since)) == ["uuid-2", "uuid-3", "uuid-4"]
    assert uuids(get_flows(channel, since=since, until=until)) == ["uuid-2", "uuid-3"]
    [masked] = get_flows(channel, number=1, field_mask=FieldMask(paths=["verdict", "source.pod_name"]))
    assert masked.flow.verdict == flow_pb2.FORWARDED and masked.flow.source.pod_name == "client"
    assert not masked.flow.uuid and not masked.flow.HasField("IP") and not masked.flow.source.namespace


# What hubble 1.19 asks for with -o compact/dict/table (--use-default-field-masks, on by default).
CLI_DEFAULT_MASK = ["time", "verdict", "ethernet", "IP", "l4", "source.identity", "source.namespace",
                    "source.pod_name", "destination.identity", "destination.namespace", "destination.pod_name",
                    "Type", "node_name", "l7", "event_type", "source_service", "destination_service", "is_reply",
                    "Summary", "ip_trace_id"]


def test_the_cli_default_field_mask(channel: grpc.Channel) -> None:
    [masked] = get_flows(channel, number=1, first=True, field_mask=FieldMask(paths=CLI_DEFAULT_MASK))
    f = masked.flow
    assert (f.verdict, f.IP.destination, f.l4.TCP.destination_port) == (flow_pb2.FORWARDED, "10.0.1.0", 80)
    assert (f.source.pod_name, f.destination.pod_name, f.event_type.type, f.Summary) == ("client", "server-0", 4,
                                                                                        "flow 0")
    assert not f.uuid and not f.source.ID and f.traffic_direction == flow_pb2.TRAFFIC_DIRECTION_UNKNOWN


def test_bad_requests_are_invalid_argument(channel: grpc.Channel) -> None:
    for request in ({"whitelist": [flow_pb2.FlowFilter(source_ip=["not-an-ip"])]},
                    {"field_mask": FieldMask(paths=["no_such_field"])}, {"first": True, "follow": True}):
        with pytest.raises(grpc.RpcError) as info:
            get_flows(channel, number=1, **request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_follow_gets_new_flows_that_match(channel: grpc.Channel, ring: FlowRing) -> None:
    request = observer_pb2.GetFlowsRequest(number=1, follow=True,
                                           whitelist=[flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED])])
    stream = stub(channel).GetFlows(request, timeout=10)
    got: list[str] = []

    def read() -> None:
        for response in stream:
            got.append(response.flow.uuid)
            if len(got) == 2:
                return

    reader = threading.Thread(target=read)
    reader.start()
    wait_for(lambda: got, 5, 0.02, "no flow of the history reached the follower")
    assert got == ["uuid-3"]  # the last matching flow of the history
    ring.add(flow(5))  # forwarded: filtered out
    ring.add(flow(6, "DROPPED"))
    reader.join(5)
    stream.cancel()
    assert got == ["uuid-3", "uuid-6"]


def test_follow_without_number_starts_at_the_end(channel: grpc.Channel, ring: FlowRing) -> None:
    stream = stub(channel).GetFlows(observer_pb2.GetFlowsRequest(follow=True), timeout=10)
    first: list[str] = []

    def read_one() -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled at the end of a failing test
            first.append(next(iter(stream)).flow.uuid)

    reader = threading.Thread(target=read_one)
    reader.start()
    added = 0

    def followed() -> bool:
        nonlocal added
        ring.add(flow(100 + added))  # new flows until the subscription is in place
        added += 1
        reader.join(0.1)
        return not reader.is_alive()

    try:
        wait_for(followed, 5, 0, "the follower never got a new flow")
    finally:
        stream.cancel()
    assert len(first) == 1 and int(first[0].removeprefix("uuid-")) >= 100  # none of the history


def test_nodes_namespaces_agent_and_debug_events(channel: grpc.Channel, ring: FlowRing) -> None:
    now = time.time_ns()
    ring.add(flow(7, namespace="recent", at_ns=now))
    [node] = stub(channel).GetNodes(observer_pb2.GetNodesRequest(), timeout=5).nodes
    assert (node.name, node.state, node.num_flows, node.max_flows) == ("n1", relay_pb2.NODE_CONNECTED, 6, CAPACITY)
    assert node.address == "127.0.0.1:0" and not node.tls.enabled and not node.tls.server_name
    namespaces = stub(channel).GetNamespaces(observer_pb2.GetNamespacesRequest(), timeout=5).namespaces
    # the last hour's; the cluster is empty in the default cluster, as a Cilium agent answers
    assert [(n.cluster, n.namespace) for n in namespaces] == [("", "recent"), ("", "y")]
    events = list(stub(channel).GetAgentEvents(observer_pb2.GetAgentEventsRequest(number=10), timeout=5))
    assert [e.agent_event.type for e in events] == [flow_pb2.AGENT_STARTED] and events[0].node_name == "n1"
    assert list(stub(channel).GetDebugEvents(observer_pb2.GetDebugEventsRequest(number=10), timeout=5)) == []
    following = stub(channel).GetDebugEvents(observer_pb2.GetDebugEventsRequest(follow=True), timeout=0.5)
    with pytest.raises(grpc.RpcError) as info:
        list(following)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # held open, nothing sent


def test_tcp_plaintext(server: HubbleServer) -> None:
    assert server.tcp_port
    with grpc.insecure_channel(f"127.0.0.1:{server.tcp_port}") as ch:
        assert stub(ch).ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5).num_flows == 5


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_tcp_tls(ring: FlowRing, tmp_path: Path, impl: str) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=n1",
                    "-addext", "subjectAltName=DNS:n1.hubble-grpc.cilium.io,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    s = HubbleServer(HubbleConfig("n1", tmp_path / "h.sock", CAPACITY, "127.0.0.1:0", TlsFiles(cert, key),
                                  server_impl=impl), ring)
    s.start()
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{s.tcp_port}", credentials) as ch:
            assert stub(ch).ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5).num_flows == 5
            [node] = stub(ch).GetNodes(observer_pb2.GetNodesRequest(), timeout=5).nodes
            assert node.tls.enabled and node.tls.server_name == "n1.default.hubble-grpc.cilium.io"  # as peers name it
        with grpc.insecure_channel(f"127.0.0.1:{s.tcp_port}") as plain, pytest.raises(grpc.RpcError):
            stub(plain).ServerStatus(observer_pb2.ServerStatusRequest(), timeout=2)
    finally:
        s.stop()
    assert not (tmp_path / "h.sock").exists()


def test_a_flow_that_does_not_convert_is_skipped_not_fatal(channel: grpc.Channel, ring: FlowRing,
                                                          server: HubbleServer) -> None:
    ring.add({"uuid": "broken", "time": "not a time"})
    assert uuids(get_flows(channel, number=2)) == ["uuid-3", "uuid-4"]
    assert server.source.conversion_errors == 1


def test_history_selection_follows_hubbles_ring_reader() -> None:
    from cilia.hubble.convert import convert
    from cilia.hubble.filters import FlowFilters
    from cilia.hubble.server import select_history

    flows = [convert(flow(i)) for i in range(6)]
    everything = FlowFilters([], [])
    since = Timestamp()
    since.FromNanoseconds(T0 + 2 * 10**9)

    def pick(**request: Any) -> list[str]:
        return [f.uuid for f in select_history(flows, observer_pb2.GetFlowsRequest(**request), everything)]

    assert pick(number=2) == ["uuid-4", "uuid-5"]
    assert pick(number=2, follow=True) == ["uuid-4", "uuid-5"]  # then new flows
    assert pick(follow=True) == []
    assert pick(number=2, first=True) == ["uuid-0", "uuid-1"]
    assert pick(since=since, number=2) == ["uuid-2", "uuid-3"]  # forward from since, capped
    assert pick(since=since, number=2, follow=True) == ["uuid-2", "uuid-3", "uuid-4", "uuid-5"]  # no cap
    assert pick() == [f"uuid-{i}" for i in range(6)]
    until = Timestamp()
    until.FromNanoseconds(T0 + 4 * 10**9)
    assert pick(until=until) == [f"uuid-{i}" for i in range(5)]
    assert pick(number=3, until=until) == ["uuid-3", "uuid-4"]  # the last 3, then cut at until


def test_the_server_impl_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from cilia.agent.config import parse_config

    pods = ["--ipv4-pod-cidr", "10.200.1.0/24"]
    assert HubbleConfig.from_agent(parse_config(pods)).server_impl == "h2"
    assert HubbleConfig.from_agent(parse_config([*pods, "--hubble-server-impl", "grpcio"])).server_impl == "grpcio"
    with pytest.raises(SystemExit):
        parse_config([*pods, "--hubble-server-impl", "nope"])
    assert "--hubble-server-impl" in capsys.readouterr().err
    from cilia.relay.main import build_parser

    assert build_parser().parse_args([]).server_impl == "h2"
    assert build_parser().parse_args(["--server-impl", "grpcio"]).server_impl == "grpcio"
