"""cilia-relay on a cluster lab (`kvstore: etcd`, `relay: true`): the relay finds the nodes in
etcd's node registry (`cilia/nodes/<name>`), not from flags; a cross-node connection (native
routing, no masquerade) is seen from both ends through it; a node whose agent is stopped is
reported unavailable while the other node's flows keep coming, and is read again once back."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from cilia.hubble.pb import flow_pb2, observer_pb2, observer_pb2_grpc, relay_pb2
from cilia.lab.lab import LAB_DIR, Lab
from cilia.testing import wait_for
from cilia.testing.labs import running_lab

FF = flow_pb2.FlowFilter
TOPOLOGY = {
    "kvstore": "etcd", "etcd": {"members": 1}, "relay": True,
    "nodes": [{"name": "n1", "podCIDRv4": "10.200.1.0/24"}, {"name": "n2", "podCIDRv4": "10.200.2.0/24"}],
    "pods": [{"name": "client1", "node": "n1", "labels": {"app": "client"}},
             {"name": "web2", "node": "n2", "labels": {"app": "web"}, "ports": [{"port": 80}]}],
}


@pytest.fixture(scope="module")
def clab() -> Iterator[Lab]:
    with running_lab(TOPOLOGY) as running:
        yield running


@pytest.fixture(scope="module")
def channel(clab: Lab) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"unix://{clab.relay['socket']}") as ch:
        yield ch


def observer(channel: grpc.Channel) -> Any:
    return observer_pb2_grpc.ObserverStub(channel)  # type: ignore[no-untyped-call]


def node_states(channel: grpc.Channel) -> list[tuple[str, int]]:
    nodes = observer(channel).GetNodes(observer_pb2.GetNodesRequest(), timeout=10).nodes
    return [(n.name, n.state) for n in nodes]


CONNECTED = [("n1", relay_pb2.NODE_CONNECTED), ("n2", relay_pb2.NODE_CONNECTED)]


def test_nodes_found_in_the_registry(clab: Lab, channel: grpc.Channel) -> None:
    relay_cmdline = Path(f"/proc/{clab.relay['pid']}/cmdline").read_bytes().split(b"\0")
    assert b"--kvstore-endpoints" in relay_cmdline and not any(a.startswith(b"--peer=") for a in relay_cmdline)
    wait_for(lambda: node_states(channel) == CONNECTED, 30, 0.3,
             lambda: f"relay nodes {node_states(channel)}; log: {(LAB_DIR / 'relay.log').read_text()[-2000:]}")
    status = observer(channel).ServerStatus(observer_pb2.ServerStatusRequest(), timeout=10)
    assert (status.num_connected_nodes.value, status.num_unavailable_nodes.value) == (2, 0)


def test_cross_node_connection_from_both_ends(clab: Lab, channel: grpc.Channel) -> None:
    wait_for(lambda: node_states(channel) == CONNECTED, 30, 0.3, "relay does not read both nodes")
    start = Timestamp()
    start.FromNanoseconds(time.time_ns() - 10**9)
    wait_for(lambda: clab.probe("client1", "web2", 80, timeout=1.0)["verdict"] == "connected", 20, 0.5,
             "client1 (n1) cannot reach web2 (n2)")
    client_ip, web_ip = clab.address_of("client1"), clab.address_of("web2")

    def both_ends() -> bool:
        got = [r.flow for r in observer(channel).GetFlows(observer_pb2.GetFlowsRequest(
            since=start, whitelist=[FF(source_ip=[client_ip], destination_ip=[web_ip], destination_port=["80"])]),
            timeout=20) if r.HasField("flow")]
        return {"n1", "n2"} <= {f.node_name for f in got}

    wait_for(both_ends, 15, 0.3, "client1 -> web2 is not seen on both nodes (not masqueraded) through the relay")


def test_stopped_agent_unavailable_other_streams(clab: Lab, channel: grpc.Channel) -> None:
    wait_for(lambda: node_states(channel) == CONNECTED, 30, 0.3, "relay does not read both nodes")
    stream = observer(channel).GetFlows(observer_pb2.GetFlowsRequest(
        follow=True, whitelist=[FF(source_pod=["default/client1"])]), timeout=120)
    got: list[observer_pb2.GetFlowsResponse] = []

    def read() -> None:
        with contextlib.suppress(grpc.RpcError):
            for response in stream:
                got.append(response)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: got, 10, 0.05, "the follower got nothing")
        clab.stop_agent("n2")
        # unavailable while its lease lives; once the lease expires its record (and the peer) goes
        wait_for(lambda: ("n2", relay_pb2.NODE_CONNECTED) not in node_states(channel), 15, 0.2,
                 "n2 still reported connected")
        status = observer(channel).ServerStatus(observer_pb2.ServerStatusRequest(), timeout=10)
        assert status.num_connected_nodes.value == 1
        assert list(status.unavailable_nodes) in (["n2"], [])
        started = time.time_ns()

        def n1_streams() -> bool:
            clab.probe("client1", "web2", 80, timeout=0.5)
            return any(r.HasField("flow") and r.flow.node_name == "n1" and r.flow.time.ToNanoseconds() >= started
                       for r in got)

        wait_for(n1_streams, 15, 0.2, "n1's flows stopped while n2 is down")
    finally:
        stream.cancel()
        reader.join(5)
        clab.start_agent("n2")
    wait_for(lambda: node_states(channel) == CONNECTED, 40, 0.3, "n2 is not read again after it came back")


def test_agents_peer_service_lists_the_cluster(clab: Lab) -> None:
    """`hubble watch peers` against an agent: every node of the registry, at its Observer socket."""
    from cilia.hubble.pb import peer_pb2, peer_pb2_grpc
    from cilia.paths import NodePaths

    with grpc.insecure_channel(f"unix://{NodePaths('n1').hubble_socket}") as ch:
        notify = peer_pb2_grpc.PeerStub(ch).Notify(peer_pb2.NotifyRequest(), timeout=20)  # type: ignore[no-untyped-call]
        got: dict[str, peer_pb2.ChangeNotification] = {}
        for change in notify:
            if change.type == peer_pb2.PEER_ADDED:
                got[change.name] = change
            if set(got) == {"n1", "n2"}:
                break
        notify.cancel()
    assert {name: c.address for name, c in got.items()} == {
        "n1": f"unix://{NodePaths('n1').hubble_socket}", "n2": f"unix://{NodePaths('n2').hubble_socket}"}
