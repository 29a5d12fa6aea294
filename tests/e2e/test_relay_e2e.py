"""cilia-relay on a two-node lab (examples/lab-relay.yaml, `relay: true`), read as `hubble
--server unix:///run/cilia/relay/hubble.sock` reads it, with a client generated from our .proto:
both nodes connected, a cross-node connection seen from both ends in one time-ordered stream, the
service map page in a real headless Chromium (run in the relay's namespace) drawing the lab's pods,
a new connection's edge within 2 s and a denied probe's edge as dropped, the relay's /metrics, and
one node's agent stopped: reported unavailable while the other node still streams."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cilia.api.client import AgentClient
from cilia.api.models import ApplyRequest
from cilia.hubble.pb import flow_pb2, observer_pb2, observer_pb2_grpc, relay_pb2
from cilia.lab.lab import PYTHON, Lab, in_netns
from cilia.paths import NodePaths
from cilia.testing import browser, wait_for
from cilia.testing.labs import EXAMPLES, WEB_FROM_DB, running_lab

FF = flow_pb2.FlowFilter
ARTIFACTS = Path(os.environ.get("CILIA_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[2] / "build" / "test-artifacts"))
PODS = {"default/client", "default/web", "team-a/db", "default/client2"}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with running_lab(EXAMPLES / "lab-relay.yaml") as running:
        yield running


@pytest.fixture(scope="module")
def channel(lab: Lab) -> Iterator[grpc.Channel]:
    socket = Path(lab.relay["socket"])
    assert socket.exists(), f"{socket} missing: the lab started no relay"
    with grpc.insecure_channel(f"unix://{socket}") as ch:
        yield ch


def observer(channel: grpc.Channel) -> Any:
    return observer_pb2_grpc.ObserverStub(channel)  # type: ignore[no-untyped-call]


def status(channel: grpc.Channel) -> observer_pb2.ServerStatusResponse:
    reply: observer_pb2.ServerStatusResponse = observer(channel).ServerStatus(observer_pb2.ServerStatusRequest(),
                                                                               timeout=10)
    return reply


def flows(channel: grpc.Channel, **request: Any) -> list[observer_pb2.GetFlowsResponse]:
    return list(observer(channel).GetFlows(observer_pb2.GetFlowsRequest(**request), timeout=20))


def since(seconds_ago: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(time.time_ns() - int(seconds_ago * 10**9))
    return stamp


def both_connected(channel: grpc.Channel) -> bool:
    return status(channel).num_connected_nodes.value == 2


def test_status_and_nodes(channel: grpc.Channel) -> None:
    wait_for(lambda: both_connected(channel), 20, 0.2, "the relay does not see both nodes")
    health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
    assert health.Check(health_pb2.HealthCheckRequest(service="hubble.server.Observer"), timeout=5).status \
        == health_pb2.HealthCheckResponse.SERVING
    reply = status(channel)  # `hubble status`: Connected Nodes: 2/2
    assert reply.num_unavailable_nodes.value == 0 and list(reply.unavailable_nodes) == []
    assert reply.max_flows == 2 * 4096 and reply.seen_flows >= reply.num_flows > 0
    nodes = observer(channel).GetNodes(observer_pb2.GetNodesRequest(), timeout=10).nodes  # `hubble list nodes`
    assert [(n.name, n.state) for n in nodes] == [("n1", relay_pb2.NODE_CONNECTED), ("n2", relay_pb2.NODE_CONNECTED)]
    assert all(n.version.startswith("cilia v") and n.uptime_ns > 0 for n in nodes)


def test_a_cross_node_connection_seen_from_both_ends(lab: Lab, channel: grpc.Channel) -> None:
    wait_for(lambda: both_connected(channel), 20, 0.2, "the relay does not see both nodes")
    start = since(1)
    assert lab.probe("client", "web", 80)["verdict"] == "connected"
    web_ip = lab.address_of("web")
    # hubble observe --since ... --port 80 (through the relay: both nodes' flows)
    port_80 = [FF(destination_port=["80"]), FF(source_port=["80"])]

    def both_ends() -> list[flow_pb2.Flow] | None:
        got = [r.flow for r in flows(channel, since=start, whitelist=port_80) if r.HasField("flow")]
        at_n1 = [f for f in got if f.node_name == "n1" and f.source.pod_name == "client"
                 and f.IP.destination == web_ip]
        at_n2 = [f for f in got if f.node_name == "n2" and f.destination.pod_name == "web"
                 and f.l4.TCP.destination_port == 80]
        return got if at_n1 and at_n2 else None

    got = wait_for(both_ends, 15, 0.3, "the connection is not seen on both nodes through the relay")
    assert got is not None
    assert all(f.verdict == flow_pb2.FORWARDED for f in got if f.IP.destination == web_ip)
    times = [f.time.ToNanoseconds() for f in got]
    # one merged stream in time order (a node's own ring order may cross by a little across CPUs)
    assert all(later >= earlier - 10**7 for earlier, later in itertools.pairwise(times))
    # hubble observe --node-name n2: only n2's end
    only_n2 = [r.flow for r in flows(channel, since=start, whitelist=[FF(node_name=["n2"], destination_port=["80"])])
               if r.HasField("flow")]
    assert only_n2 and {f.node_name for f in only_n2} == {"n2"}
    # `hubble list namespaces`: merged from both nodes (namespaces seen in flows)
    assert lab.probe("db", "web", 80)["verdict"] == "connected"
    wait_for(lambda: {"default", "team-a"} <= {n.namespace for n in observer(channel).GetNamespaces(
        observer_pb2.GetNamespacesRequest(), timeout=10).namespaces}, 10, 0.3, "namespaces not merged")
    # the stream starts by naming the nodes it reads
    first = flows(channel, number=1)[0]
    assert first.node_status.state_change == relay_pb2.NODE_CONNECTED
    assert sorted(first.node_status.node_names) == ["n1", "n2"]


@pytest.fixture(scope="module")
def web_from_db(lab: Lab) -> Iterator[Lab]:
    """web (n2) takes port 80 from team-a/db only; each node has its own store, so it goes to n2."""
    with AgentClient(NodePaths("n2").socket) as client:
        client.apply(ApplyRequest(objects=[WEB_FROM_DB]), wait=30)
    try:
        yield lab
    finally:
        with AgentClient(NodePaths("n2").socket) as client:
            client.delete(ApplyRequest(objects=[{"kind": WEB_FROM_DB["kind"], "metadata": WEB_FROM_DB["metadata"]}]))


EDGES_JS = ("[...document.querySelectorAll('#edges path.edge')].map(e => "
            "[e.dataset.src, e.dataset.dst, e.dataset.verdict, Number(e.dataset.count)])")
NODES_JS = "[...document.querySelectorAll('#nodes g.node')].map(n => n.dataset.id)"


def edges(page: browser.Page) -> set[tuple[str, str, str]]:
    return {(src, dst, verdict) for src, dst, verdict, _ in page.evaluate(EDGES_JS)}


@pytest.mark.skipif(not browser.available(), reason="chromium is not installed (scripts/install-deps.sh)")
def test_service_map_in_a_real_browser(web_from_db: Lab) -> None:
    lab = web_from_db
    assert lab.probe("db", "web", 80)["verdict"] == "connected"
    assert lab.probe("client2", "web", 80, timeout=1.0)["verdict"] != "connected"  # denied by WEB_FROM_DB
    relay = lab.relay
    with browser.browser(relay["netns"]) as page:  # the page is served inside the relay's namespace only
        page.navigate(f"http://{relay['ui']}/")
        assert page.evaluate("document.title") == "cilia service map"
        wait_for(lambda: set(page.evaluate(NODES_JS)) >= PODS,
                 10, 0.2, lambda: f"the lab's pods are not all drawn: {page.evaluate(NODES_JS)}")
        wait_for(lambda: ("default/client2", "default/web", "dropped") in edges(page), 10, 0.2,
                 lambda: f"no dropped edge client2 -> web: {sorted(edges(page))}")
        assert ("team-a/db", "default/web", "forwarded") in edges(page)
        assert ("default/client2", "default/web", "forwarded") not in edges(page)
        dropped_css = page.evaluate("getComputedStyle(document.querySelector('#edges path.edge.dropped')).stroke")
        assert dropped_css == "rgb(224, 49, 49)"  # drawn red
        # a new connection: its edge appears within 2 s (the live stream, not a reload)
        assert ("default/client2", "team-a/db", "forwarded") not in edges(page)
        assert lab.probe("client2", "db", 5432)["verdict"] == "connected"
        done = time.monotonic()
        wait_for(lambda: ("default/client2", "team-a/db", "forwarded") in edges(page), 2.0, 0.05,
                 "the new connection's edge did not appear within 2 s")
        took = time.monotonic() - done
        # the namespace filter and the flows table
        page.evaluate("document.getElementById('namespace').value = 'team-a';"
                      "document.getElementById('namespace').dispatchEvent(new Event('change'))")
        wait_for(lambda: "default/web" not in page.evaluate(NODES_JS) or "team-a/db" in page.evaluate(NODES_JS),
                 5, 0.1, "the namespace filter did nothing")
        assert "team-a/db" in page.evaluate(NODES_JS)
        page.evaluate("document.getElementById('namespace').value = '';"
                      "document.getElementById('filter').value = 'verdict:DROPPED';"
                      "document.getElementById('filter').dispatchEvent(new Event('input'))")
        rows = page.evaluate("[...document.querySelectorAll('#flows tbody tr')].map(r => r.className)")
        assert rows and set(rows) == {"DROPPED"}
        page.evaluate("document.getElementById('filter').value = '';"
                      "document.getElementById('filter').dispatchEvent(new Event('input'))")
        time.sleep(0.3)  # one redraw tick (200 ms) before the picture; nothing is asserted on it
        shot = page.screenshot(ARTIFACTS / "service-map.png")
    assert shot.stat().st_size > 10_000
    print(f"service map screenshot: {shot}; new edge drawn {took:.2f} s after the probe")


def test_relay_metrics(lab: Lab) -> None:
    relay = lab.relay
    url = f"http://{relay['metrics']}/metrics"
    script = f"import urllib.request,sys; sys.stdout.write(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
    text = subprocess.run(in_netns(relay["netns"], PYTHON, "-c", script), capture_output=True, text=True,
                          timeout=30, check=True).stdout
    assert 'hubble_relay_pool_peer_connection_status{status="READY"} 2.0' in text
    assert 'cilia_relay_peer_available{node="n2"} 1.0' in text
    assert "cilia_relay_flows_forwarded_total" in text


def test_one_agent_stopped_is_reported_and_the_other_still_streams(lab: Lab, channel: grpc.Channel) -> None:
    wait_for(lambda: both_connected(channel), 20, 0.2, "the relay does not see both nodes")
    stream = observer(channel).GetFlows(observer_pb2.GetFlowsRequest(
        follow=True, whitelist=[FF(source_pod=["default/client"])]), timeout=120)
    got: list[observer_pb2.GetFlowsResponse] = []

    def read() -> None:
        with contextlib.suppress(grpc.RpcError):
            for response in stream:
                got.append(response)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(r.HasField("node_status") for r in got), 10, 0.05, "the follower got no node status")
        lab.stop_agent("n2")

        def n2_unavailable() -> bool:
            reply = status(channel)
            return reply.num_unavailable_nodes.value == 1 and list(reply.unavailable_nodes) == ["n2"]

        wait_for(n2_unavailable, 15, 0.2, "ServerStatus does not report n2 unavailable")
        assert status(channel).num_connected_nodes.value == 1
        nodes = observer(channel).GetNodes(observer_pb2.GetNodesRequest(), timeout=10).nodes
        assert [(n.name, n.state) for n in nodes] == [("n1", relay_pb2.NODE_CONNECTED),
                                                      ("n2", relay_pb2.NODE_UNAVAILABLE)]
        assert any(r.node_status.state_change == relay_pb2.NODE_ERROR and list(r.node_status.node_names) == ["n2"]
                   for r in got), "the follower was not told that n2's stream ended"
        # n1 still streams: a new probe from client (n1) comes through the same follower
        seen = len([r for r in got if r.HasField("flow")])
        started = time.time_ns()

        def n1_streams() -> bool:
            lab.probe("client", "web", 80, timeout=0.5)
            return any(r.HasField("flow") and r.flow.node_name == "n1" and r.flow.time.ToNanoseconds() >= started
                       for r in got[seen:])

        wait_for(n1_streams, 15, 0.2, "n1's flows stopped coming while n2 is down")
        # a fresh request names n2 unavailable up front and still answers
        fresh = flows(channel, number=5)
        assert (fresh[1].node_status.state_change, list(fresh[1].node_status.node_names)) \
            == (relay_pb2.NODE_UNAVAILABLE, ["n2"])
        assert any(r.HasField("flow") and r.flow.node_name == "n1" for r in fresh)
    finally:
        stream.cancel()
        reader.join(5)
        if lab.state["nodes"]["n2"].get("agent_pid"):
            lab.start_agent("n2")
    wait_for(lambda: both_connected(channel), 20, 0.2, "n2 did not come back in the relay")
    print(json.dumps({"events_seen": len(got)}))
