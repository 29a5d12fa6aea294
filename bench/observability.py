"""Observability benchmarks (`python -m bench.observability`, or `bench.run --only flows,obs`).

1. Flow pipeline, in process (`pipeline_stages`): the cost per flow of each stage a followed
   flow goes through (decode + build, flow.Flow conversion, GetFlowsResponse serialization) and
   of the whole gRPC stream from a HubbleServer to a client over its unix socket, one core.
2. Flow pipeline, on a lab (`pipeline_lab`): real traffic at a paced rate (iperf3 UDP between two pods,
   `--monitor-aggregation none` so every packet is an event) -> ring buffer -> event pump ->
   flow ring -> Hubble server -> a `hubble observe -f`-like gRPC follower in this process. Per
   rate: events the datapath emitted, flows the follower got, events lost (datapath ring buffer,
   and HUBBLE_RING_BUFFER lost events the server reported), how full the datapath ring got (and
   how full it was when an event was lost: `RingWatch`), the agent's CPU per flow, and the CPU
   of the generator, the sink and the follower.
3. Observability overhead (`overhead`): pod-to-pod throughput (iperf3), latency (sockperf) and
   connections/s with observability off (`--disable-hubble`, no metrics), with metrics
   (`--prometheus-serve-addr`, `--hubble-metrics` flow, drop, tcp, policy with pod contexts,
   scraped) and on (the same plus a `hubble observe -f`-like follower), in rounds whose order
   alternates, on the same lab (the agent is restarted with the other flags between runs)."""

from __future__ import annotations

import argparse
import mmap
import os
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

from bench.tools import cps, iperf3, sockperf, write_results
from cilia.bpf import BpfMap
from cilia.flows.build import EndpointView, Flow, FlowBuilder
from cilia.flows.ring import FlowRing
from cilia.flows.shape import Shape
from cilia.flows.tap import FlowTap
from cilia.hubble.convert import convert
from cilia.hubble.metrics.options import parse_metrics
from cilia.hubble.metrics.processor import FlowMetrics
from cilia.hubble.namespaces import NamespaceTracker
from cilia.hubble.pb import flow_pb2, observer_pb2
from cilia.hubble.wire import WireEncoder, shape_key
from cilia.lab.lab import PYTHON, Lab, cleanup_leftovers
from cilia.lab.topology import parse_topology
from cilia.maps.events import LOST_KEY, lost_total
from cilia.monitor.events import EVENT_TRACE, decode
from cilia.paths import NodePaths

OBS_ON = ["--prometheus-serve-addr", "127.0.0.1:9962", "--hubble-metrics",
          "flow drop tcp policy:sourceContext=pod;destinationContext=pod"]
OBS_OFF = ["--disable-hubble"]
CLK = os.sysconf("SC_CLK_TCK")


# ----- in process --------------------------------------------------------------------------------
def _record(n: int, dst: bytes = bytes([10, 200, 1, 3])) -> bytes:
    src = bytes([10, 200, 1, 2])
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, src, dst)
    packet = bytes.fromhex("020000000002020000000001") + b"\x08\x00" + ip + struct.pack(
        "!HHIIBBHHH", 40000 + n % 20000, 80, 1, 0, 0x50, 0x10, 65535, 0, 0)
    header = struct.pack("<QBBBBHHIIIIHHI", 5_000_000 + n, EVENT_TRACE, 0, 1, 2, 0, 7, 4, 256, 257,
                         len(packet), len(packet), 2, 0)
    return header + packet.ljust(128, b"\0")


def _builder() -> FlowBuilder:
    views = {"10.200.1.2": EndpointView(7, 256, "default", "client", ["k8s:app=client"]),
             "10.200.1.3": EndpointView(9, 257, "default", "web", ["k8s:app=web"])}
    return FlowBuilder("n1", views.get, lambda _i: [], time.time_ns() - time.monotonic_ns())


def _maker(builder: FlowBuilder, record: bytes) -> Callable[[], Flow]:
    return lambda: builder.build(decode(record))


class _Context:
    """The event pump's RecordContext, on the bench's builder and an encoder with the same lookups."""

    def __init__(self, builder: FlowBuilder, fast: bool = True) -> None:
        self.builder = builder
        self.views = builder._endpoints
        self.encoder = WireEncoder("n1", lambda _i: [], builder._boot_time_ns)
        self.fast = fast

    def build(self, record: bytes, flow_id: str) -> Flow | None:
        return self.builder.build(decode(record), self.views, flow_id)

    def encode(self, record: bytes, flow_id: str) -> bytes | None:
        return self.encoder.encode(record, flow_id, self.views) if self.fast else None

    def encode_many(self, records: list[bytes], flow_ids: list[str]) -> list[bytes | None]:
        if not self.fast:
            return [None] * len(records)
        return self.encoder.encode_many(records, flow_ids, self.views)

    shape_key = staticmethod(shape_key)

    def shape(self, record: bytes) -> Shape | None:
        return self.encoder.shape(record, self.views)


_STREAM_CLIENT = """
import sys, time, grpc
from cilia.hubble.pb import observer_pb2
socket, number, raw = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "raw"
with grpc.insecure_channel("unix://" + socket) as channel:
    if raw:  # a client that does not parse what it gets (as the Go CLI, whose cost is not ours)
        call = channel.unary_stream("/observer.Observer/GetFlows", request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)
        request = observer_pb2.GetFlowsRequest(number=number).SerializeToString()
        got = sum(1 for _ in call(request, timeout=600))
    else:
        call = channel.unary_stream("/observer.Observer/GetFlows",
                                    request_serializer=observer_pb2.GetFlowsRequest.SerializeToString,
                                    response_deserializer=observer_pb2.GetFlowsResponse.FromString)
        got = sum(1 for r in call(observer_pb2.GetFlowsRequest(number=number), timeout=600) if r.HasField("flow"))
print(got)
"""


def go_client(directory: Path) -> Path | None:
    """tests/grpcgo's grpc-go client built into `directory` (GOPATH mode, Debian's grpc-go), or None
    without go / golang-google-grpc-dev."""
    import shutil
    import subprocess

    gocode = Path("/usr/share/gocode")
    if shutil.which("go") is None or not (gocode / "src/google.golang.org/grpc").is_dir():
        return None
    binary = directory / "grpcgo-client"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": f"{directory / 'gopath'}:{gocode}", "CGO_ENABLED": "0",
           "GOCACHE": os.environ.get("GOCACHE", "/tmp/cilia-go-cache")}
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=Path(__file__).parents[1] / "tests" / "grpcgo",
                   env=env, check=True, timeout=300, capture_output=True)
    return binary


def _stream(ring: FlowRing, count: int, client: str, impl: str = "h2", go: Path | None = None) -> dict[str, Any]:
    """GetFlows(number=count) from a HubbleServer (`impl`: h2 or grpcio) in this process to a client in
    another (`client`: parse / raw, Python grpcio; go: the grpc-go client, not parsing): flows/s, and
    this process's (the server's) CPU per flow."""
    import subprocess
    import sys

    from cilia.hubble.server import HubbleConfig, HubbleServer

    with tempfile.TemporaryDirectory(prefix="cilia-bench-") as tmp:
        server = HubbleServer(HubbleConfig("n1", Path(tmp) / "hubble.sock", count, server_impl=impl), ring)
        server.start()
        try:
            if client == "go":
                assert go is not None
                request = observer_pb2.GetFlowsRequest(number=count).SerializeToString().hex()
                command = [str(go), "-addr", f"unix:{server.config.socket}", "-method", "/observer.Observer/GetFlows",
                           "-request", request, "-stream", "-count", "-timeout", "600s"]
            else:
                command = [sys.executable, "-c", _STREAM_CLIENT, str(server.config.socket), str(count), client]
            cpu = time.process_time()
            started = time.perf_counter()
            out = subprocess.run(command, capture_output=True, text=True, timeout=900, check=True)
            wall = time.perf_counter() - started
            cpu = time.process_time() - cpu
        finally:
            server.stop(0)
    if client == "go":
        got = int(out.stdout.split("COUNT ")[1].split()[0])
        assert "STATUS 0" in out.stdout, out.stdout
    else:
        got = int(out.stdout.split()[-1])
    return {"server": impl, "client": client, "flows": got, "seconds": round(wall, 2), "flows_per_s": round(got / wall),
            "server_cpu_s": round(cpu, 2), "flows_per_server_cpu_s": round(got / cpu)}


_GRPC_FLOOR = """
import asyncio, sys, time, grpc
number, socket = int(sys.argv[1]), sys.argv[2]
payload = bytes(300)
async def stream(request, context):
    for _ in range(number):
        yield payload
async def main():
    server = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(stream, request_deserializer=lambda b: b,
                                                   response_serializer=lambda b: b)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", {"S": handler}),))
    server.add_insecure_port("unix://" + socket)
    await server.start()
    print("ready", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def _grpc_floor(count: int) -> dict[str, Any]:
    """grpcio's own cost: a grpc.aio server streaming `count` ready-made 300-byte messages (no
    work per message at all) to a client that does not parse them."""
    import subprocess
    import sys

    import grpc

    with tempfile.TemporaryDirectory(prefix="cilia-bench-") as tmp:
        socket = f"{tmp}/floor.sock"
        server = subprocess.Popen([sys.executable, "-c", _GRPC_FLOOR, str(count), socket], stdout=subprocess.PIPE,
                                  text=True)
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            cpu0 = _cpu_seconds(server.pid)
            started = time.perf_counter()
            with grpc.insecure_channel(f"unix://{socket}") as channel:
                call = channel.unary_stream("/t.T/S", request_serializer=lambda b: b,
                                            response_deserializer=lambda b: b)
                got = sum(1 for _ in call(b"", timeout=600))
            wall = time.perf_counter() - started
            cpu = _cpu_seconds(server.pid) - cpu0
        finally:
            server.terminate()
            server.wait(5)
    return {"messages": got, "messages_per_s": round(got / wall), "server_cpu_s": round(cpu, 2),
            "messages_per_server_cpu_s": round(got / cpu) if cpu else None}


def _per_flow(run: Callable[[], object], count: int) -> tuple[float, int]:
    """(µs per flow, flows per CPU-second) of one pass over `count` flows."""
    cpu = time.process_time()
    started = time.perf_counter()
    run()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    return round(wall / count * 1e6, 1), round(count / cpu) if cpu else 0


def pipeline_stages(count: int = 20_000) -> dict[str, Any]:
    """Each stage's µs per flow and flows per CPU-second, and whole GetFlows streams (server in this
    process, client in another): the slow path (dict, convert, serialize), the fast path (record ->
    wire bytes; also with no record's shape met before), and grpcio's own floor."""
    records = [_record(n) for n in range(count)]
    builder = _builder()
    out: dict[str, Any] = {"flows": count}

    def ingest() -> FlowRing:
        ring = FlowRing(count)
        context = _Context(builder)
        for start in range(0, count, 256):  # the pump's batches: one drain of the ring buffer each
            ring.add_records(records[start:start + 256], context)
        return ring

    out["ingest_us"], out["ingest_per_cpu_s"] = _per_flow(ingest, count)
    # the Hubble metrics (the overhead bench's) and the namespace tracker fed by a tap: by shape (one
    # flow built a shape), and by flow (every flow built, as a consumer that reads ports must be fed)
    for label, consumers in (("by_shape", lambda: [FlowMetrics(parse_metrics(OBS_ON[3])), NamespaceTracker()]),
                             ("by_flow", lambda: [FlowMetrics(parse_metrics(f"{OBS_ON[3]} port-distribution"))])):
        tap = FlowTap(ingest(), consumers(), budget=None)
        tap._cursor = 0
        out[f"metrics_tap_{label}_us"], out[f"metrics_tap_{label}_per_cpu_s"] = _per_flow(tap.step, count)
    flows: list[Flow] = []
    out["decode_build_us"], out["decode_build_per_cpu_s"] = _per_flow(
        lambda: flows.extend(builder.build(decode(r)) for r in records), count)
    messages: list[flow_pb2.Flow] = []
    out["convert_us"], out["convert_per_cpu_s"] = _per_flow(lambda: messages.extend(convert(f) for f in flows),
                                                            count)

    def serialize() -> None:
        for m in messages:
            response = observer_pb2.GetFlowsResponse(flow=m, node_name="n1")
            response.time.CopyFrom(m.time)
            response.SerializeToString()

    out["serialize_us"], out["serialize_per_cpu_s"] = _per_flow(serialize, count)
    encoder = _Context(builder).encoder
    views = builder._endpoints
    out["fast_encode_us"], out["fast_encode_per_cpu_s"] = _per_flow(
        lambda: [encoder.encode(r, "00000000-0000-4000-8000-000000000000", views) for r in records], count)
    # the same records, but each to an address of its own (no endpoint here): no shape met twice, so
    # none served from the encoder's cache (its worst case: a flood to ever new peers)
    unique = [_record(n, bytes([10, 201, n >> 8 & 0xFF, n & 0xFF])) for n in range(count)]
    cold = _Context(builder).encoder
    out["fast_encode_new_shapes_us"], out["fast_encode_new_shapes_per_cpu_s"] = _per_flow(
        lambda: [cold.encode(r, "00000000-0000-4000-8000-000000000000", views) for r in unique], count)
    # hubble observe's default output (compact) asks for a field mask: on the bytes, and protobuf's way
    from google.protobuf.field_mask_pb2 import FieldMask

    from cilia.hubble.server import _response
    from cilia.hubble.wire import WireMask

    paths = ["time", "source.identity", "source.namespace", "source.pod_name", "destination.identity",
             "destination.namespace", "destination.pod_name", "source_service", "destination_service", "l4",
             "IP", "ethernet", "l7", "Type", "node_name", "is_reply", "event_type", "verdict", "drop_reason_desc",
             "Summary", "traffic_direction", "trace_observation_point", "policy_match_type", "interface"]
    wires = [encoder.encode(r, "00000000-0000-4000-8000-000000000000", views) or b"" for r in records]
    wire_mask, mask = WireMask(paths), FieldMask(paths=paths)
    out["wire_mask_us"], out["wire_mask_per_cpu_s"] = _per_flow(lambda: [wire_mask.apply(w) for w in wires], count)
    out["protobuf_mask_us"], out["protobuf_mask_per_cpu_s"] = _per_flow(
        lambda: [_response(observer_pb2.GetFlowsResponse.FromString(w).flow, mask).SerializeToString()
                 for w in wires], count)
    ring = FlowRing(count)
    for r in records:  # lazy, as the event pump added them before: the stream pays decode, build, convert
        ring.add_lazy(_maker(builder, r))
    out["stream_slow"] = _stream(ring, count, "parse")
    print(f"stages: {out}", flush=True)
    out["stream_fast"] = _stream(ingest(), count, "parse")
    out["stream_fast_raw_client"] = _stream(ingest(), count, "raw")
    out["stream_fast_raw_client_grpcio_server"] = _stream(ingest(), count, "raw", impl="grpcio")
    with tempfile.TemporaryDirectory(prefix="cilia-bench-go-") as tmp:
        go = go_client(Path(tmp))
        if go is not None:
            out["stream_fast_go_client"] = _stream(ingest(), count, "go", go=go)
            out["stream_fast_go_client_grpcio_server"] = _stream(ingest(), count, "go", impl="grpcio", go=go)
    out["grpc_floor"] = _grpc_floor(count)
    out["note"] = ("stream_*: server in this process (cilia's own HTTP/2 gRPC server unless it says grpcio), "
                   "client in another; flows_per_server_cpu_s counts the server's CPU only (ring -> encode -> "
                   "gRPC). raw_client: a Python grpcio client that does not parse; go_client: a grpc-go client "
                   "(tests/grpcgo) that does not parse (the hubble CLI's transport; its cost is not ours). "
                   "grpc_floor: grpcio alone, no work per message")
    return out


# ----- on a lab ----------------------------------------------------------------------------------
# The load: iperf3 in UDP mode, 32-byte datagrams paced by its timer (`-b`, bits of payload a
# second; it sleeps between bursts, where sockperf's `--mps` spins a core), one iperf3 server in
# the server pod as the sink. A packet's kernel path (both pods' BPF programs, the veth, the
# socket) is paid in the sender's context, as a sending workload pays it; what the generator no
# longer costs is a Python interpreter per packet on both ends (the senders and sink before).
IPERF_PORT = 5301
DATAGRAM = 32


def _iperf_udp(lab: Lab, server_ip: str, rate: int, seconds: float) -> tuple[int, float]:
    """(datagrams sent, seconds sending) of one paced iperf3 UDP run from bench-client."""
    import json

    command = ["iperf3", "-c", server_ip, "-p", str(IPERF_PORT), "-u", "-l", str(DATAGRAM),
               "-b", str(rate * DATAGRAM * 8), "-t", str(max(1, round(seconds))), "-J"]
    for _attempt in range(20):  # the server may not listen yet: bounded retries, no fixed sleep
        result = lab.exec("bench-client", command, timeout=seconds + 30)
        report = json.loads(result.stdout or "{}")
        if "error" not in report and result.returncode == 0:
            total = report["end"]["sum"]
            return int(total["packets"]), float(total["seconds"])
        time.sleep(0.1)
    raise RuntimeError(f"iperf3 UDP client failed: {result.stdout[-300:]} {result.stderr[-300:]}")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


class Follower:
    """`hubble observe -f`: GetFlows(follow) on the node's hubble.sock, counting flows and lost events."""

    def __init__(self, node: str = "n1") -> None:
        import grpc

        from cilia.hubble.pb import observer_pb2_grpc

        self.flows = 0
        self.lost = 0  # HUBBLE_RING_BUFFER: flows the server dropped because this client fell behind
        self.lost_datapath = 0  # PERF_EVENT_RING_BUFFER: events the datapath lost, as the server reported
        self._channel = grpc.insecure_channel(f"unix://{NodePaths(node).hubble_socket}")
        stub = observer_pb2_grpc.ObserverStub(self._channel)  # type: ignore[no-untyped-call]
        self._stream = stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True))
        self.pid = 0  # in this process: its CPU is the bench's
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        import grpc

        try:
            for response in self._stream:
                if response.HasField("flow"):
                    self.flows += 1
                elif response.HasField("lost_events"):
                    if response.lost_events.source == flow_pb2.HUBBLE_RING_BUFFER:
                        self.lost += response.lost_events.num_events_lost
                    else:
                        self.lost_datapath += response.lost_events.num_events_lost
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self._stream.cancel()
        self._thread.join(5)
        self._channel.close()


class GoFollower:
    """The same follower in grpc-go (tests/grpcgo with -stats: the transport `hubble observe -f` is
    built on, and a client that costs what a Go client costs, not a Python one)."""

    def __init__(self, binary: Path, node: str = "n1") -> None:
        import subprocess

        self.flows = 0
        self.lost = 0
        self.lost_datapath = 0
        request = observer_pb2.GetFlowsRequest(follow=True).SerializeToString().hex()
        self._process = subprocess.Popen([str(binary), "-addr", f"unix:{NodePaths(node).hubble_socket}", "-method",
                                          "/observer.Observer/GetFlows", "-request", request, "-stream", "-stats",
                                          "-timeout", "3600s"], stdout=subprocess.PIPE, text=True)
        self.pid = self._process.pid
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            parts = line.split()
            if len(parts) == 5 and parts[0] == "FLOWS":
                self.flows, self.lost, self.lost_datapath = int(parts[1]), int(parts[3]), int(parts[4])

    def close(self) -> None:
        time.sleep(0.3)  # one more report
        self._process.terminate()
        self._process.wait(5)
        self._thread.join(5)


_GO_CLIENT: list[Path] = []


def follower(kind: str) -> Follower | GoFollower:
    """A `hubble observe -f`-like follower: Python grpcio (`python`) or grpc-go (`go`, built once)."""
    if kind == "go":
        if not _GO_CLIENT:
            import atexit
            import shutil

            directory = tempfile.mkdtemp(prefix="cilia-bench-go-")
            atexit.register(shutil.rmtree, directory, True)
            built = go_client(Path(directory))
            if built is None:
                raise SystemExit("--follower go needs golang-go and golang-google-grpc-dev")
            _GO_CLIENT.append(built)
        return GoFollower(_GO_CLIENT[0])
    return Follower()


class RingWatch:
    """The node's datapath ring seen from outside the agent every 5 ms (its pinned maps, the
    positions read-only): the fullest it was (producer - consumer, bytes) and its fill at each
    sample where the lost-event counter had moved. Losses with the ring far from full are not a
    slow reader: how the 2026-12-02 consumer-position bug showed itself."""

    def __init__(self, node: str = "n1", interval: float = 0.005) -> None:
        pins = NodePaths(node).bpffs_dir
        self._ring = BpfMap.from_pin(pins / "cilia_events_v1")
        self._lost = BpfMap.from_pin(pins / "cilia_events_lost_v1")
        self.size = self._ring.max_entries
        page = mmap.PAGESIZE
        self._consumer = mmap.mmap(self._ring.fd, page, mmap.MAP_SHARED, mmap.PROT_READ)
        self._producer = mmap.mmap(self._ring.fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self.max_fill = 0
        self.fill_at_loss: list[int] = []
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _lost_now(self) -> int:
        return lost_total(self._lost.lookup(LOST_KEY) or b"")

    def _run(self) -> None:
        position = struct.Struct("<Q")
        lost = self._lost_now()
        while not self._stop.wait(self._interval):
            consumer = position.unpack_from(self._consumer, 0)[0]
            fill = position.unpack_from(self._producer, 0)[0] - consumer
            self.max_fill = max(self.max_fill, fill)
            now = self._lost_now()
            if now != lost:
                self.fill_at_loss.append(fill)
                lost = now

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()
        self._producer.close()
        self._ring.close()
        self._lost.close()


def _status(node: str = "n1") -> tuple[int, int]:
    """(flows seen, datapath events lost) from the agent's API."""
    from cilia.api.client import AgentClient

    with AgentClient(NodePaths(node).socket) as client:
        flows = client.get("/v1/flows/status")
    return int(flows["seen"]), int(flows["events_lost"])


def _lab(agent_args: list[str]) -> Lab:
    cleanup_leftovers()
    return Lab.up(parse_topology({"pods": [{"name": "bench-client", "labels": {"app": "bench-client"}},
                                           {"name": "bench-server", "labels": {"app": "bench-server"}}]}),
                  agent_args=agent_args)


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pipeline_lab(rates: list[int], seconds: float, impl: str = "h2",
                 follower_kind: str = "python") -> list[dict[str, Any]]:
    lab = _lab(["--monitor-aggregation", "none", "--hubble-server-impl", impl])
    out = []
    sink = lab.popen("bench-server", ["iperf3", "-s", "-p", str(IPERF_PORT)])
    try:
        server_ip = lab.address_of("bench-server")
        pid = int(lab.state["nodes"]["n1"]["agent_pid"])
        for rate in rates:
            following = follower(follower_kind)
            time.sleep(0.5)
            watch = RingWatch()
            seen0, lost0 = _status()
            cpu0, sink0, gen0 = _cpu_seconds(pid), _cpu_seconds(sink.pid), _children_cpu()
            follower0 = _cpu_seconds(following.pid) if following.pid else 0.0
            sent, took = _iperf_udp(lab, server_ip, rate, seconds)
            generator_cpu = _children_cpu() - gen0
            deadline = time.monotonic() + 10  # the follower drains what the ring still holds
            while time.monotonic() < deadline and following.flows + following.lost < _status()[0] - seen0:
                time.sleep(0.2)
            seen1, lost1 = _status()
            watch.close()
            cpu = _cpu_seconds(pid) - cpu0
            follower_cpu = _cpu_seconds(following.pid) - follower0 if following.pid else None
            sink_cpu = _cpu_seconds(sink.pid) - sink0
            following.close()
            events = seen1 - seen0
            out.append({"server": impl, "follower": follower_kind, "rate_pps": rate, "generator": "iperf3 -u",
                        "packets_sent": sent, "send_seconds": round(took, 3),
                        "events": events, "events_per_s": round(events / took),
                        "followed_flows": following.flows, "lost_datapath": lost1 - lost0,
                        "lost_hubble_ring": following.lost,
                        "ring_max_fill_bytes": watch.max_fill, "ring_fill_at_loss_bytes": watch.fill_at_loss,
                        "agent_cpu_s": round(cpu, 2),
                        "generator_cpu_s": round(generator_cpu, 2), "sink_cpu_s": round(sink_cpu, 2),
                        "follower_cpu_s": round(follower_cpu, 2) if follower_cpu is not None else None,
                        "flows_per_agent_cpu_s": round(following.flows / cpu) if cpu else None,
                        "events_per_agent_cpu_s": round(events / cpu) if cpu else None})
            print(f"pipeline at {rate} pkt/s: {out[-1]}", flush=True)
    finally:
        sink.terminate()
        sink.wait(5)
        lab.down()
    return out


def _scrape(lab: Lab) -> int:
    fetch = ("import urllib.request, sys; "
             "sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:9962/metrics').read().decode())")
    result = lab.exec("n1", [PYTHON, "-c", fetch], timeout=30)
    return sum(1 for line in result.stdout.splitlines() if line.startswith("hubble_"))


def overhead(seconds: int, rounds: int, impl: str = "h2", follower_kind: str = "python") -> dict[str, Any]:
    lab = _lab(OBS_OFF)
    client, server = lab.netns_of("bench-client"), lab.netns_of("bench-server")
    ip = lab.address_of("bench-server")
    # metrics: the flags, no follower; on: the flags and a follower; budget: the same with the
    # follower held to 5% of a core (--hubble-follow-cpu-budget 0.05; what it misses is reported lost)
    modes = ("off", "metrics", "on", "budget")
    on = [*OBS_ON, "--hubble-server-impl", impl]
    flags = {"off": OBS_OFF, "metrics": on, "on": on, "budget": [*on, "--hubble-follow-cpu-budget", "0.05"]}
    per: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    hubble_series = 0
    try:
        for index in range(rounds):
            for mode in (modes if index % 2 == 0 else modes[::-1]):
                agent = lab.restart_agent("n1", kill=False, agent_args=flags[mode])
                following = follower(follower_kind) if mode in ("on", "budget") else None
                try:
                    agent0 = _cpu_seconds(agent)
                    follower0 = _cpu_seconds(following.pid) if following is not None and following.pid else 0.0
                    figures = {"throughput_gbps": iperf3(client, server, ip, seconds),
                               "latency_avg_us": sockperf(client, server, ip, seconds)[0],
                               "connections_per_s": cps(client, server, ip, seconds)}
                    # over the three measurements: where the CPU the workload did not get went
                    figures["agent_cpu_s"] = round(_cpu_seconds(agent) - agent0, 2)
                    if following is not None:
                        figures["followed_flows"] = following.flows
                        figures["follower_lost"] = following.lost
                        if following.pid:
                            figures["follower_cpu_s"] = round(_cpu_seconds(following.pid) - follower0, 2)
                    if mode != "off":
                        hubble_series = max(hubble_series, _scrape(lab))
                finally:
                    if following is not None:
                        following.close()
                per[mode].append(figures)
                print(f"round {index + 1}/{rounds} observability {mode}: {figures}", flush=True)
    finally:
        lab.down()
    medians = {mode: {k: round(median(r[k] for r in rows), 2) for k in rows[0]} for mode, rows in per.items()}
    keys = ("throughput_gbps", "latency_avg_us", "connections_per_s")
    ratios = {f"{mode}/off": {k: round(medians[mode][k] / medians["off"][k], 3) for k in keys}
              for mode in ("metrics", "on", "budget")}
    return {"server": impl, "follower": follower_kind, "rounds": per, "medians": medians, "ratios": ratios,
            "hubble_series_scraped": hubble_series}


def run(seconds: int, rounds: int, rates: list[int], parts: set[str], impl: str = "h2",
        follower_kind: str = "python") -> dict[str, Any]:
    results: dict[str, Any] = {}
    if "stages" in parts:
        results["pipeline_stages"] = pipeline_stages()
        print(f"stages: {results['pipeline_stages']}", flush=True)
    if "lab" in parts:
        results["pipeline_lab"] = pipeline_lab(rates, seconds, impl, follower_kind)
    if "overhead" in parts:
        results["overhead"] = overhead(seconds, rounds, impl, follower_kind)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="cilia observability benchmarks")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rates", default="2000,5000,20000,50000,100000", help="packets/s for the lab pipeline run")
    parser.add_argument("--only", default="stages,lab,overhead")
    parser.add_argument("--hubble-server-impl", choices=("h2", "grpcio"), default="h2",
                        help="the agent's Hubble gRPC server in the lab and overhead runs")
    parser.add_argument("--follower", choices=("python", "go"), default="python",
                        help="the lab's `hubble observe -f`-like client: Python grpcio or grpc-go (tests/grpcgo)")
    args = parser.parse_args()
    results = run(args.seconds, args.rounds, [int(r) for r in args.rates.split(",")], set(args.only.split(",")),
                  args.hubble_server_impl, args.follower)
    results["date"] = time.strftime("%Y-%m-%d %H:%M")
    write_results("observability", results)


if __name__ == "__main__":
    main()
