"""Real traffic through the lab: pods, node and world, IPv4 and IPv6; flows; agent kill -9; clean teardown."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cilia.api.client import AgentClient
from cilia.lab.lab import Lab
from cilia.lab.process import in_netns
from cilia.paths import NodePaths
from cilia.testing import wait_for


@pytest.mark.parametrize("ipv6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize(
    ("source", "target", "port", "protocol", "peer"),
    [
        ("client", "web", 80, "tcp", "web"),
        ("client", "web", 53, "udp", "web"),
        ("client", "db", 5432, "tcp", "db"),  # across namespaces
        ("client", "world1", 80, "tcp", "world1"),  # pod -> world, masqueraded by the node
        ("client", "world1", 53, "udp", "world1"),
        ("n1", "web", 80, "tcp", "web"),  # node -> pod
    ],
)
def test_probe(lab: Lab, source: str, target: str, port: int, protocol: str, peer: str, ipv6: bool) -> None:
    verdict = lab.probe(source, target, port, protocol, ipv6=ipv6)
    assert verdict["verdict"] == "connected", verdict
    assert verdict["peer"] == peer


def test_pod_to_node_reaches_the_node_stack(lab: Lab) -> None:
    verdict = lab.probe("client", "n1", 9, "tcp")  # nothing listens: the node's RST proves the round trip
    assert verdict["verdict"] == "refused", verdict


def test_closed_port_is_refused_not_dropped(lab: Lab) -> None:
    assert lab.probe("client", "web", 81, "tcp")["verdict"] == "refused"


def test_flows_show_the_traffic(lab: Lab) -> None:
    assert lab.probe("client", "db", 5432, "tcp")["verdict"] == "connected"

    def flows_to_db() -> list[dict[str, object]]:
        with AgentClient(NodePaths("n1").socket) as client:
            return [r["flow"] for r in client.stream_lines("/v1/flows", {"last": 200, "to_pod": "team-a/db",
                                                                          "port": "5432"})]

    flows = wait_for(flows_to_db, 10, 0.2, "no flow to team-a/db:5432")
    syn = next(f for f in flows if f.get("l4", {}).get("TCP", {}).get("flags") == {"SYN": True})
    assert syn["verdict"] == "FORWARDED" and syn["trace_observation_point"] == "TO_ENDPOINT"
    assert syn["source"]["pod_name"] == "client" and syn["destination"]["namespace"] == "team-a"
    cli = subprocess.run([os.path.join(os.path.dirname(sys.executable), "cilia"), "observe", "--node", "n1",
                          "--to-pod", "team-a/db", "-o", "json", "--last", "5"], capture_output=True, text=True,
                         check=True, timeout=30)
    printed = [json.loads(line)["flow"] for line in cli.stdout.splitlines()]
    assert printed, f"cilia observe --to-pod team-a/db printed no flow: {cli.stderr}"  # all() of nothing holds
    assert all(flow["destination"]["pod_name"] == "db" for flow in printed), printed


def test_established_tcp_survives_agent_kill_9(lab: Lab) -> None:
    """A live connection keeps working while the agent is dead and after it restored its endpoints."""
    web = lab.address_of("web")
    script = (
        "import socket,sys,time\n"
        f"s=socket.create_connection(('{web}',80),timeout=5); s.recv(64)\n"
        "for line in sys.stdin:\n"
        "    s.sendall(line.encode()); got=s.recv(64).decode()\n"
        "    print('ok' if got==line else 'bad', flush=True)\n"
    )
    client = subprocess.Popen(in_netns(lab.netns_of("client"), sys.executable, "-c", script),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert client.stdin is not None and client.stdout is not None
    try:
        def echo(word: str) -> str:
            assert client.stdin is not None and client.stdout is not None
            client.stdin.write(word + "\n")
            client.stdin.flush()
            return client.stdout.readline().strip()

        assert echo("before") == "ok"
        with AgentClient(NodePaths("n1").socket) as api:
            before = {e.id: e.identity for e in api.list_endpoints()}
        pid = int(lab.state["nodes"]["n1"]["agent_pid"])
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        assert echo("agent-down") == "ok"  # the datapath forwards with no agent at all
        lab.restart_agent("n1", kill=False)
        assert echo("after") == "ok"
        with AgentClient(NodePaths("n1").socket) as api:
            after = {e.id: e.identity for e in api.list_endpoints()}
            assert api.status().restored_endpoints == len(before)
        assert after == before  # restored, same ids and identities, not recreated
        assert lab.probe("client", "web", 80, "tcp")["verdict"] == "connected"
    finally:
        client.kill()
        client.wait(timeout=10)
