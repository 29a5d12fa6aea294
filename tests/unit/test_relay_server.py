"""cilia-relay against real in-process agents' Hubble servers (two nodes on unix sockets), read
with a client generated from our .proto as `hubble --server <relay>` reads it: merged history in
time order, node status events, ServerStatus sums and unavailable nodes, GetNodes, GetNamespaces,
a node stopped mid-follow (reported, the other keeps streaming) and back, the peer service,
/metrics and the service map's event stream."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cilia.cluster import codec
from cilia.cluster.model import NodeRecord, RoutingMode
from cilia.flows.ring import FlowRing
from cilia.hubble.h2server import IMPLEMENTATIONS
from cilia.hubble.pb import flow_pb2, observer_pb2, observer_pb2_grpc, peer_pb2, peer_pb2_grpc, relay_pb2
from cilia.hubble.peer import PeerInfo, changes
from cilia.hubble.server import HubbleConfig, HubbleServer
from cilia.relay.discovery import DiscoveryError, StaticSource, apply_notification, parse_peer, registry_peer
from cilia.relay.server import Relay, RelayConfig
from cilia.testing import wait_for

T0 = (time.time_ns() // 10**9 - 600) * 10**9


def flow(node: str, i: int, at_ns: int, verdict: str = "FORWARDED", namespace: str = "default") -> dict[str, Any]:
    stamp = Timestamp()
    stamp.FromNanoseconds(at_ns)
    return {"time": stamp.ToJsonString(), "uuid": f"{node}-{i}", "verdict": verdict, "Type": "L3_L4",
            "node_name": node, "event_type": {"type": 1 if verdict == "DROPPED" else 4},
            "drop_reason": 133 if verdict == "DROPPED" else 0, "traffic_direction": "INGRESS",
            "IP": {"source": "10.200.1.5", "destination": "10.200.2.7", "ipVersion": "IPv4"},
            "l4": {"TCP": {"source_port": 40000 + i, "destination_port": 80, "flags": {"SYN": True}}},
            "source": {"ID": 1, "identity": 256, "namespace": namespace, "pod_name": "client", "labels": []},
            "destination": {"ID": 2, "identity": 257, "namespace": "default", "pod_name": "web", "labels": []},
            "Summary": f"flow {i}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Agent:
    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.ring = FlowRing(64)
        self.socket = tmp / f"{name}.sock"
        self.server: HubbleServer | None = None

    def start(self) -> None:
        self.server = HubbleServer(HubbleConfig(self.name, self.socket, 64), self.ring)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=0.1)
            self.server = None


class RelayThread:
    def __init__(self, config: RelayConfig, peers: list[PeerInfo]) -> None:
        self.relay: Relay | None = None
        self._config = config
        self._peers = peers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self.relay = Relay(self._config, [StaticSource(self._peers)])
            task = asyncio.create_task(self.relay.run())
            await self.relay.ready.wait()
            self._started.set()
            await task
        asyncio.run(main())

    def start(self) -> None:
        self._thread.start()
        assert self._started.wait(10), "relay did not start"

    def stop(self) -> None:
        if self._loop is not None and self.relay is not None:
            self._loop.call_soon_threadsafe(self.relay.stop)
        self._thread.join(10)


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[dict[str, Agent]]:
    nodes = {name: Agent(name, tmp_path) for name in ("n1", "n2")}
    # interleaved in time: n1 has the even seconds, n2 the odd ones
    for i in range(6):
        nodes["n1"].ring.add(flow("n1", i, T0 + 2 * i * 10**9))
        nodes["n2"].ring.add(flow("n2", i, T0 + (2 * i + 1) * 10**9, "DROPPED" if i == 2 else "FORWARDED",
                                  "team-a" if i == 0 else "default"))
    for agent in nodes.values():
        agent.start()
    try:
        yield nodes
    finally:
        for agent in nodes.values():
            agent.stop()


@pytest.fixture(params=IMPLEMENTATIONS)
def relay(agents: dict[str, Agent], tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RelayThread]:
    config = RelayConfig(f"unix://{tmp_path / 'relay.sock'}", metrics_address=f"127.0.0.1:{free_port()}",
                         ui_address=f"127.0.0.1:{free_port()}", window=0.2, server_impl=request.param)
    thread = RelayThread(config, [PeerInfo(a.name, f"unix://{a.socket}") for a in agents.values()])
    thread.start()
    assert thread.relay is not None
    wait_for(lambda: all(n.available for n in thread.relay.pool.nodes()), 10, 0.05, "relay never connected")  # type: ignore[union-attr]
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def channel(relay: RelayThread, tmp_path: Path) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"unix://{tmp_path / 'relay.sock'}") as ch:
        yield ch


def stub(channel: grpc.Channel) -> Any:
    return observer_pb2_grpc.ObserverStub(channel)  # type: ignore[no-untyped-call]


def responses(channel: grpc.Channel, **request: Any) -> list[observer_pb2.GetFlowsResponse]:
    return list(stub(channel).GetFlows(observer_pb2.GetFlowsRequest(**request), timeout=10))


def test_history_merged_in_time_order_after_node_status(channel: grpc.Channel) -> None:
    got = responses(channel, number=3)
    status = got[0]
    assert status.WhichOneof("response_types") == "node_status"
    assert status.node_status.state_change == relay_pb2.NODE_CONNECTED
    assert sorted(status.node_status.node_names) == ["n1", "n2"]
    flows = [r.flow for r in got if r.HasField("flow")]
    # as upstream: `number` is each node's last N, merged
    assert [f.uuid for f in flows] == ["n1-3", "n2-3", "n1-4", "n2-4", "n1-5", "n2-5"]
    times = [f.time.ToNanoseconds() for f in flows]
    assert times == sorted(times)
    first = [r.flow.uuid for r in responses(channel, number=2, first=True) if r.HasField("flow")]
    assert first == ["n1-0", "n2-0", "n1-1", "n2-1"]


def test_filters_and_since_are_passed_to_the_nodes(channel: grpc.Channel) -> None:
    dropped = [r.flow for r in responses(channel, number=20, whitelist=[
        flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED])]) if r.HasField("flow")]
    assert [(f.node_name, f.uuid) for f in dropped] == [("n2", "n2-2")]
    since = Timestamp()
    since.FromNanoseconds(T0 + 9 * 10**9)
    recent = [r.flow.uuid for r in responses(channel, since=since) if r.HasField("flow")]
    assert recent == ["n2-4", "n1-5", "n2-5"]
    with pytest.raises(grpc.RpcError) as info:
        responses(channel, whitelist=[flow_pb2.FlowFilter(source_ip=["not-an-ip"])])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        responses(channel, first=True, follow=True)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_status_nodes_namespaces_health(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
    assert health.Check(health_pb2.HealthCheckRequest(service="hubble.server.Observer"), timeout=5).status \
        == health_pb2.HealthCheckResponse.SERVING
    status = stub(channel).ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
    assert (status.num_flows, status.max_flows, status.seen_flows) == (12, 128, 12)
    assert status.num_connected_nodes.value == 2 and status.HasField("num_unavailable_nodes")
    assert status.num_unavailable_nodes.value == 0 and list(status.unavailable_nodes) == []
    assert status.version.startswith("cilia-relay") and status.uptime_ns > 0
    nodes = stub(channel).GetNodes(observer_pb2.GetNodesRequest(), timeout=5).nodes
    assert [(n.name, n.state) for n in nodes] == [("n1", relay_pb2.NODE_CONNECTED), ("n2", relay_pb2.NODE_CONNECTED)]
    assert all(n.version.startswith("cilia v") and n.num_flows == 6 and n.address.startswith("unix://")
               for n in nodes)
    namespaces = stub(channel).GetNamespaces(observer_pb2.GetNamespacesRequest(), timeout=5).namespaces
    # merged across the nodes (each answers cluster "" in the default cluster, as Cilium's agents)
    assert [(n.cluster, n.namespace) for n in namespaces] == [("", "default"), ("", "team-a")]
    with pytest.raises(grpc.RpcError) as info:
        list(stub(channel).GetAgentEvents(observer_pb2.GetAgentEventsRequest(), timeout=5))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_node_down_is_reported_and_does_not_block_the_others(channel: grpc.Channel, agents: dict[str, Agent],
                                                               relay: RelayThread) -> None:
    stream = stub(channel).GetFlows(observer_pb2.GetFlowsRequest(follow=True), timeout=60)
    got: list[observer_pb2.GetFlowsResponse] = []

    def read() -> None:
        with contextlib.suppress(grpc.RpcError):
            for response in stream:
                got.append(response)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(r.HasField("node_status") for r in got), 5, 0.02, "no node status")
        agents["n2"].stop()  # mid-stream
        wait_for(lambda: any(r.node_status.state_change == relay_pb2.NODE_ERROR
                             and list(r.node_status.node_names) == ["n2"] for r in got),
                 10, 0.05, "n2's lost stream was not reported")
        now = time.time_ns()
        agents["n1"].ring.add(flow("n1", 100, now))
        wait_for(lambda: any(r.flow.uuid == "n1-100" for r in got), 5, 0.05, "n1's new flow did not come through")
        assert relay.relay is not None
        wait_for(lambda: not relay.relay.pool.nodes()[1].available, 10, 0.05, "n2 still looks available")  # type: ignore[union-attr]
        status = stub(channel).ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
        assert (status.num_connected_nodes.value, status.num_unavailable_nodes.value) == (1, 1)
        assert list(status.unavailable_nodes) == ["n2"] and status.num_flows == 7
        nodes = stub(channel).GetNodes(observer_pb2.GetNodesRequest(), timeout=5).nodes
        assert [(n.name, n.state) for n in nodes] == [("n1", relay_pb2.NODE_CONNECTED),
                                                      ("n2", relay_pb2.NODE_UNAVAILABLE)]
        # a new request says so first
        fresh = responses(channel, number=1)
        assert [(r.node_status.state_change, list(r.node_status.node_names)) for r in fresh[:2]] == [
            (relay_pb2.NODE_CONNECTED, ["n1"]), (relay_pb2.NODE_UNAVAILABLE, ["n2"])]
        # back: reconnected within the bounded backoff, and the follower reads it again
        agents["n2"].start()
        wait_for(lambda: relay.relay.pool.nodes()[1].available, 15, 0.1, "n2 never reconnected")  # type: ignore[union-attr]
        added = iter(range(200, 300))

        def picked_up() -> bool:  # new n2 flows until the follower reads n2 again (it starts at the end)
            agents["n2"].ring.add(flow("n2", next(added), time.time_ns()))
            return any(r.flow.node_name == "n2" and r.flow.uuid >= "n2-200" for r in got)

        wait_for(picked_up, 10, 0.2, "the follower did not pick n2 up again")
    finally:
        stream.cancel()
        reader.join(5)


def test_metrics_and_service_map_stream(relay: RelayThread) -> None:
    config = relay._config
    assert config.metrics_address is not None and config.ui_address is not None
    host, port = config.metrics_address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    assert 'hubble_relay_pool_peer_connection_status{status="READY"} 2.0' in text
    assert 'cilia_relay_peer_available{node="n1"} 1.0' in text
    host, port = config.ui_address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    connection.request("GET", "/")
    assert b"cilia service map" in connection.getresponse().read()
    connection.request("GET", "/app.js")
    assert b"EventSource" in connection.getresponse().read()
    connection.request("GET", "/api/flows?number=2")
    response = connection.getresponse()
    assert response.getheader("content-type", "").startswith("text/event-stream")
    events: list[tuple[str, Any]] = []
    event = ""
    while len([e for e in events if e[0] == "flow"]) < 4:
        line = response.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((event, json.loads(line.removeprefix("data: "))))
    connection.close()
    assert events[0] == ("status", {"state": "NODE_CONNECTED", "nodes": ["n1", "n2"], "message": ""})
    flows = [data for kind, data in events if kind == "flow"]
    assert [f["uuid"] for f in flows] == ["n1-4", "n2-4", "n1-5", "n2-5"]
    assert flows[0]["source"]["id"] == "default/client" and flows[0]["destination"]["id"] == "default/web"
    assert flows[0]["verdict"] == "FORWARDED" and flows[0]["destination_port"] == 80


def test_the_agents_peer_service(agents: dict[str, Agent]) -> None:
    with grpc.insecure_channel(f"unix://{agents['n1'].socket}") as ch:
        notify = peer_pb2_grpc.PeerStub(ch).Notify(peer_pb2.NotifyRequest(), timeout=2)  # type: ignore[no-untyped-call]
        first = next(iter(notify))
        notify.cancel()
    assert (first.name, first.address, first.type) == ("n1", f"unix://{agents['n1'].socket}", peer_pb2.PEER_ADDED)
    assert not first.HasField("tls")


def test_peer_changes_and_their_application() -> None:
    a, b = PeerInfo("a", "unix:///a"), PeerInfo("b", "10.0.0.2:4244", "b.default.hubble-grpc.cilium.io")
    known, out = changes({}, [b, a])
    assert [(m.name, m.type) for m in out] == [("a", peer_pb2.PEER_ADDED), ("b", peer_pb2.PEER_ADDED)]
    assert out[1].tls.server_name == "b.default.hubble-grpc.cilium.io"
    moved = PeerInfo("a", "unix:///a2")
    known2, out = changes(known, [moved])
    assert [(m.name, m.type, m.address) for m in out] == [("b", peer_pb2.PEER_DELETED, "10.0.0.2:4244"),
                                                          ("a", peer_pb2.PEER_UPDATED, "unix:///a2")]
    assert changes(known2, [moved])[1] == []
    peers: dict[str, PeerInfo] = {}
    for message in changes({}, [a, b])[1]:
        apply_notification(peers, message)
    assert peers == {"a": a, "b": b}
    apply_notification(peers, peer_pb2.ChangeNotification(name="a", type=peer_pb2.PEER_DELETED))
    assert list(peers) == ["b"]


def test_peer_flags_and_registry_records() -> None:
    assert parse_peer("n1=unix:///run/cilia/n1/hubble.sock") == PeerInfo("n1", "unix:///run/cilia/n1/hubble.sock")
    assert parse_peer("10.0.0.1:4244") == PeerInfo("10.0.0.1:4244", "10.0.0.1:4244")
    v4, v6 = ipaddress.IPv4Address("192.0.2.12"), ipaddress.IPv6Address("fd00:c1a::c")
    record = codec.encode_node(NodeRecord("n2", v4, v6, (), RoutingMode.NATIVE))
    assert registry_peer("cilia/nodes/n2", record, "{ipv4}:4244") == PeerInfo("n2", "192.0.2.12:4244")
    assert registry_peer("cilia/nodes/n2", record, "unix:///run/cilia/{name}/hubble.sock").address \
        == "unix:///run/cilia/n2/hubble.sock"
    assert registry_peer("cilia/nodes/n2", record, "[{ipv6}]:4244").address == "[fd00:c1a::c]:4244"
    for key, value in (("cilia/nodes/n3", record), ("cilia/nodes/n2", b"{not json"),
                       ("cilia/nodes/n2", json.dumps({"name": "n2", "ipv4": "x"}).encode())):
        with pytest.raises(DiscoveryError):
            registry_peer(key, value, "{ipv4}:4244")
    v6_only = codec.encode_node(NodeRecord("n2", None, v6, (), RoutingMode.NATIVE))
    with pytest.raises(DiscoveryError):
        registry_peer("cilia/nodes/n2", v6_only, "{ipv4}:4244")


def test_registry_source_follows_nodes_joining_and_leaving() -> None:
    from cilia.kvstore.memory import MemoryKv
    from cilia.relay.discovery import RegistrySource
    from cilia.relay.pool import NodePool

    kv = MemoryKv()
    lease = kv.grant_lease(10)

    def register(name: str, ip: str, on: int = lease) -> None:
        kv.put(codec.node_key(name), codec.encode_node(NodeRecord(name, ipaddress.IPv4Address(ip), None, (),
                                                                  RoutingMode.NATIVE)), lease=on)

    register("n1", "192.0.2.11")
    kv.put("cilia/nodes/garbage", b"{]")  # logged once and skipped, never fatal
    source = RegistrySource(kv, "unix:///run/cilia/{name}/hubble.sock", interval=0.05)
    assert source.list_peers() == [PeerInfo("n1", "unix:///run/cilia/n1/hubble.sock")]

    async def main() -> list[list[str]]:
        pool = NodePool()
        task = asyncio.create_task(source.run(pool))
        seen = []
        try:
            for step in ("start", "join", "leave"):
                if step == "join":
                    register("n2", "192.0.2.12")
                elif step == "leave":
                    kv.revoke(lease)  # both records go with their lease
                    register("n3", "192.0.2.13", kv.grant_lease(10))
                for _ in range(100):
                    await asyncio.sleep(0.02)
                    names = [n.name for n in pool.nodes()]
                    if names == {"start": ["n1"], "join": ["n1", "n2"], "leave": ["n3"]}[step]:
                        break
                seen.append([n.name for n in pool.nodes()])
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await pool.close()
        return seen

    assert asyncio.run(main()) == [["n1"], ["n1", "n2"], ["n3"]]


def test_cluster_peers_of_an_agent() -> None:
    from cilia.hubble.peer import cluster_peers

    nodes = [("n2", "192.0.2.12"), ("n1", "192.0.2.11")]
    assert cluster_peers(nodes, None, False, lambda n: f"/run/cilia/{n}/hubble.sock") == [
        PeerInfo("n1", "unix:///run/cilia/n1/hubble.sock"), PeerInfo("n2", "unix:///run/cilia/n2/hubble.sock")]
    tcp = cluster_peers(nodes, ":4244", True, lambda n: "")
    assert tcp == [PeerInfo("n1", "192.0.2.11:4244", "n1.default.hubble-grpc.cilium.io"),
                   PeerInfo("n2", "192.0.2.12:4244", "n2.default.hubble-grpc.cilium.io")]


def test_relay_finds_nodes_through_an_agents_peer_service(agents: dict[str, Agent], tmp_path: Path) -> None:
    from cilia.relay.discovery import PeerServiceSource

    async def main() -> list[tuple[str, bool]]:
        relay = Relay(RelayConfig(f"unix://{tmp_path / 'r.sock'}"), [PeerServiceSource(f"unix://{agents['n1'].socket}")])
        task = asyncio.create_task(relay.run())
        try:
            for _ in range(200):
                await asyncio.sleep(0.05)
                if [n.available for n in relay.pool.nodes()] == [True]:
                    break
            return [(n.name, n.available) for n in relay.pool.nodes()]
        finally:
            relay.stop()
            await task

    assert asyncio.run(main()) == [("n1", True)]  # a lone agent names itself


def test_relay_reads_a_tls_peer(tmp_path: Path) -> None:
    """A peer announced with a TLS server name is dialled with the CA and that name checked; the
    relay serves its own Observer with TLS."""
    import subprocess

    from cilia.hubble.server import TlsFiles
    from cilia.relay.pool import TlsClient

    name = "n1.default.hubble-grpc.cilium.io"
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=n1",
                    "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    ring = FlowRing(8)
    ring.add(flow("n1", 1, T0))
    agent = HubbleServer(HubbleConfig("n1", tmp_path / "h.sock", 8, "127.0.0.1:0", TlsFiles(cert, key)), ring)
    agent.start()

    async def main() -> tuple[list[str], int]:
        # the relay serves TLS too (the same certificate here), on loopback
        relay = Relay(RelayConfig("127.0.0.1:0", tls=TlsClient(cert.read_bytes()), server_tls=TlsFiles(cert, key)),
                      [StaticSource([PeerInfo("n1", f"127.0.0.1:{agent.tcp_port}", name)])])
        task = asyncio.create_task(relay.run())
        try:
            for _ in range(200):
                await asyncio.sleep(0.05)
                if all(n.available for n in relay.pool.nodes()):
                    break
            credentials = grpc.ssl_channel_credentials(cert.read_bytes())
            options = [("grpc.ssl_target_name_override", name)]
            async with grpc.aio.secure_channel(f"127.0.0.1:{relay.port}", credentials, options) as ch:
                client = observer_pb2_grpc.ObserverStub(ch)  # type: ignore[no-untyped-call]
                uuids = [r.flow.uuid async for r in client.GetFlows(observer_pb2.GetFlowsRequest(number=5), timeout=10)
                         if r.HasField("flow")]
                reply = await client.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=10)
            return uuids, reply.num_connected_nodes.value
        finally:
            relay.stop()
            await task

    try:
        assert asyncio.run(main()) == (["n1-1"], 1)
    finally:
        agent.stop()


def test_a_peer_given_by_address_only_is_named_by_the_node(agents: dict[str, Agent], tmp_path: Path) -> None:
    async def main() -> list[tuple[str, bool]]:
        address = f"unix://{agents['n2'].socket}"
        relay = Relay(RelayConfig(f"unix://{tmp_path / 'r.sock'}"), [StaticSource([parse_peer(address)])])
        task = asyncio.create_task(relay.run())
        try:
            for _ in range(200):
                await asyncio.sleep(0.05)
                if [n.name for n in relay.pool.nodes()] == ["n2"]:
                    break
            return [(n.name, n.available) for n in relay.pool.nodes()]
        finally:
            relay.stop()
            await task

    assert asyncio.run(main()) == [("n2", True)]  # learned from the agent's GetNodes


def test_follow_with_until_ends_once_every_node_reached_it(channel: grpc.Channel, agents: dict[str, Agent]) -> None:
    until = Timestamp()
    until.FromNanoseconds(T0 + 4 * 10**9)
    got: list[str] = []
    done = threading.Event()

    def read() -> None:
        with contextlib.suppress(grpc.RpcError):
            for r in stub(channel).GetFlows(observer_pb2.GetFlowsRequest(follow=True, number=10, until=until),
                                            timeout=20):
                if r.HasField("flow"):
                    got.append(r.flow.uuid)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    wait_for(lambda: len(got) == 5, 5, 0.02, lambda: f"history up to until: {got}")
    assert got == ["n1-0", "n2-0", "n1-1", "n2-1", "n1-2"]  # n2-2 is at 5 s: past until
    # as an agent does, each node ends its stream at its first new flow past `until`; then the
    # relay's ends too (it does not read the nodes again)
    for name, agent in agents.items():
        agent.ring.add(flow(name, 99, time.time_ns()))
    assert done.wait(10), "the follow with until did not end"
    assert len(got) == 5
