"""The agent's Hubble server (cilia's own HTTP/2 one) read by a real grpc-go client (Debian's
golang-google-grpc-dev, the transport hubble's CLI is built on; tests/grpcgo/main.go, built
here in GOPATH mode): ServerStatus, GetFlows with number / a filter / follow (cancelled by the
client after two flows), a history bigger than grpc-go's first flow-control window, errors as
grpc-go reads them (INVALID_ARGUMENT, UNIMPLEMENTED, DEADLINE_EXCEEDED)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from cilia.flows.ring import FlowRing
from cilia.hubble.pb import flow_pb2, observer_pb2
from cilia.hubble.server import HubbleConfig, HubbleServer
from cilia.testing import wait_for

GO_SOURCE = Path(__file__).resolve().parents[1] / "grpcgo"
GOCODE = Path("/usr/share/gocode")
T0 = (time.time_ns() // 10**9 - 7200) * 10**9

pytestmark = pytest.mark.skipif(shutil.which("go") is None or not (GOCODE / "src/google.golang.org/grpc").is_dir(),
                                reason="needs golang-go and golang-google-grpc-dev (scripts/install-deps.sh)")


def flow(i: int, verdict: str = "FORWARDED") -> dict[str, Any]:
    stamp = Timestamp()
    stamp.FromNanoseconds(T0 + i * 10**6)
    return {"time": stamp.ToJsonString(), "uuid": f"uuid-{i}", "verdict": verdict, "Type": "L3_L4",
            "node_name": "n1", "event_type": {"type": 1 if verdict == "DROPPED" else 4},
            "drop_reason": 133 if verdict == "DROPPED" else 0, "traffic_direction": "INGRESS",
            "IP": {"source": "10.0.0.1", "destination": "10.0.1.2", "ipVersion": "IPv4"},
            "l4": {"TCP": {"source_port": 40000 + i % 20000, "destination_port": 80, "flags": {"SYN": True}}},
            "source": {"ID": 1, "identity": 256, "namespace": "x", "pod_name": "client", "labels": []},
            "destination": {"ID": 2, "identity": 257, "namespace": "y", "pod_name": "server", "labels": []},
            "Summary": f"flow {i}"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("grpcgo")
    binary = out / "client"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": f"{out / 'gopath'}:{GOCODE}",
           "GOCACHE": os.environ.get("GOCACHE", "/tmp/cilia-go-cache"), "CGO_ENABLED": "0"}
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=GO_SOURCE, env=env, check=True, timeout=300)
    return binary


@pytest.fixture
def ring() -> FlowRing:
    r = FlowRing(8192)
    for i in range(5):
        r.add(flow(i, "DROPPED" if i == 3 else "FORWARDED"))
    return r


@pytest.fixture
def server(ring: FlowRing, tmp_path: Path) -> Iterator[HubbleServer]:
    s = HubbleServer(HubbleConfig("n1", tmp_path / "hubble.sock", 8192, "127.0.0.1:0", server_impl="h2"), ring)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def call(client: Path, server: HubbleServer, method: str, request: Message, *args: str,
         tcp: bool = False) -> tuple[list[bytes], int, str]:
    """The responses (serialized), the status code and message, as grpc-go reports them."""
    address = f"127.0.0.1:{server.tcp_port}" if tcp else f"unix:{server.config.socket}"
    done = subprocess.run([str(client), "-addr", address, "-method", method, "-request",
                           request.SerializeToString().hex(), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    *lines, last = done.stdout.splitlines()
    _, code, *message = last.split(" ", 2)
    return [bytes.fromhex(line) for line in lines], int(code), " ".join(message)


def flows(responses: list[bytes]) -> list[str]:
    return [observer_pb2.GetFlowsResponse.FromString(r).flow.uuid for r in responses]


def test_server_status_and_history(client: Path, server: HubbleServer) -> None:
    [reply], code, _ = call(client, server, "/observer.Observer/ServerStatus", observer_pb2.ServerStatusRequest())
    status = observer_pb2.ServerStatusResponse.FromString(reply)
    assert code == 0 and (status.num_flows, status.seen_flows) == (5, 5) and status.version.startswith("cilia v")
    responses, code, _ = call(client, server, "/observer.Observer/GetFlows", observer_pb2.GetFlowsRequest(number=2),
                              "-stream", tcp=True)
    assert code == 0 and flows(responses) == ["uuid-3", "uuid-4"]
    dropped = observer_pb2.GetFlowsRequest(number=10, whitelist=[flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED])])
    responses, code, _ = call(client, server, "/observer.Observer/GetFlows", dropped, "-stream")
    assert code == 0 and flows(responses) == ["uuid-3"]


def test_a_history_bigger_than_the_first_window(client: Path, server: HubbleServer, ring: FlowRing) -> None:
    for i in range(5, 6000):
        ring.add(flow(i))
    responses, code, message = call(client, server, "/observer.Observer/GetFlows",
                                    observer_pb2.GetFlowsRequest(number=6000), "-stream")
    assert (code, message) == (0, "")
    assert flows(responses) == [f"uuid-{i}" for i in range(6000)]


def test_follow_with_a_filter_until_the_client_cancels(client: Path, server: HubbleServer, ring: FlowRing) -> None:
    request = observer_pb2.GetFlowsRequest(number=1, follow=True,
                                           whitelist=[flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED])])
    process = subprocess.Popen([str(client), "-addr", f"unix:{server.config.socket}", "-method",
                                "/observer.Observer/GetFlows", "-request", request.SerializeToString().hex(),
                                "-stream", "-max", "2", "-timeout", "20s", "-hold"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdin is not None
        first = process.stdout.readline()
        assert flows([bytes.fromhex(first)]) == ["uuid-3"]  # the last matching flow of the history
        assert ring._entry_subscribers  # following
        ring.add(flow(10))  # forwarded: filtered out
        ring.add(flow(11, "DROPPED"))
        assert flows([bytes.fromhex(process.stdout.readline())]) == ["uuid-11"]
        assert process.stdout.readline().startswith("STATUS 0")  # the client stopped reading after two...
        # ... and cancelled its stream (RST_STREAM) on a connection it keeps open: the server stops following
        wait_for(lambda: not ring._entry_subscribers, 5, 0.02, "the server kept following a cancelled stream")
        process.stdin.close()
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_errors_as_grpc_go_reads_them(client: Path, server: HubbleServer) -> None:
    _, code, message = call(client, server, "/observer.Observer/GetFlows",
                            observer_pb2.GetFlowsRequest(first=True, follow=True), "-stream")
    assert (code, message) == (3, "first cannot be specified with follow")
    _, code, message = call(client, server, "/observer.Observer/NoSuchMethod", observer_pb2.GetFlowsRequest())
    assert (code, message) == (12, "unknown method NoSuchMethod for service observer.Observer")
    _, code, message = call(client, server, "/no.Such/Service", observer_pb2.GetFlowsRequest())
    assert (code, message) == (12, "unknown service no.Such")
    started = time.monotonic()
    _, code, _ = call(client, server, "/observer.Observer/GetDebugEvents",
                      observer_pb2.GetDebugEventsRequest(follow=True), "-stream", "-timeout", "300ms")
    assert code == 4 and time.monotonic() - started < 5  # DEADLINE_EXCEEDED
