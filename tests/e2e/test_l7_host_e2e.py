"""Ingress L7 HTTP policy for traffic that reaches a pod through the node's own stack.

A process in the node's netns (kubelet probes, a hostNetwork pod) and a NodePort connection whose
backend is local both meet the pod's cil_to_container at its veth's egress, where nothing can be
assigned to the proxy: the packet is hairpinned to the veth's ingress and assigned there
(bpf/bpf_lxc.c from_container_hairpin). On a lab with `--allow-localhost policy` (so
`fromEntities: host` decides) the web pod's ingress allows host and world on port 80 only for
`GET /public`: the allowed request reaches the server from the client's own address, the denied
one gets 403 `Access denied` and never reaches it, the L7 flows name the host (1) or world (2) as
the source, IPv4 and IPv6; the proxy down -> the connection is dropped as PROXY_UNAVAILABLE."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cilia.api.client import AgentClient
from cilia.api.models import ApplyRequest
from cilia.identity.reserved import ReservedIdentity
from cilia.lab.lab import PYTHON, Lab
from cilia.lab.process import in_netns
from cilia.paths import NodePaths
from cilia.testing import wait_for
from cilia.testing.labs import running_lab
from tests.e2e.test_l7_policy_e2e import SERVER

NODE_PORT = 30090
TOPOLOGY = {
    "nodes": [{"name": "n1", "podCIDRv4": "10.200.1.0/24", "podCIDRv6": "fd00:200:1::/64"}],
    "namespaces": [],
    "pods": [{"name": "web", "namespace": "default", "labels": {"app": "web"}},
             {"name": "other", "namespace": "default", "labels": {"app": "other"}}],
    "externals": [{"name": "world1"}],
}
POLICY = {
    "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "web-public", "namespace": "default"},
    "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
             "ingress": [{"fromEntities": ["host", "world"],
                          "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                                       "rules": {"http": [{"method": "GET", "path": "/public"}]}}]}]},
}
WEB = {
    "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
    "spec": {"type": "NodePort", "clusterIP": "10.96.0.30", "selector": {"app": "web"},
             "ports": [{"port": 80, "targetPort": 80, "nodePort": NODE_PORT}]},
}
# one keep-alive connection: each request's status and body, and the client's own address
CLIENT = textwrap.dedent("""
    import sys, json, http.client
    conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=3)
    out = []
    try:
        for path in json.loads(sys.argv[3]):
            conn.request("GET", path)
            r = conn.getresponse()
            out.append([r.status, r.read().decode(), conn.sock.getsockname()[0]])
    except OSError as e:
        out.append(["error", str(e), ""])
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(TOPOLOGY, agent_args=["--allow-localhost", "policy"]) as running:
        logs = tmp_path_factory.mktemp("servers")
        os.chmod(logs, 0o755)
        log = logs / "web.log"
        log.touch()
        servers = []
        try:
            for extra in ((), ("6",)):
                servers.append(subprocess.Popen(in_netns(running.netns_of("web"), PYTHON, "-c", SERVER, str(log),
                                                         "web", *extra),
                                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL))
                started = len(servers)
                wait_for(lambda: log.read_text().count("ready") == started, 10, 0.1,  # noqa: B023
                         "the web server did not start")
            running.state["web_log"] = str(log)
            with AgentClient(NodePaths("n1").socket, timeout=60) as client:
                client.apply(ApplyRequest(objects=[POLICY, WEB]), wait=60)
            yield running
        finally:
            for server in servers:
                server.send_signal(signal.SIGTERM)
                server.wait(5)


def get(lab: Lab, source: str, address: str, paths: list[str], port: int = 80) -> list[list[Any]]:
    out = subprocess.run(in_netns(lab.netns_of(source), PYTHON, "-c", CLIENT, address, str(port), json.dumps(paths)),
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def server_log(lab: Lab) -> list[str]:
    return [line for line in Path(lab.state["web_log"]).read_text().splitlines() if line != "ready"]


def flows(*flags: str) -> list[dict[str, Any]]:
    out = subprocess.run([str(Path(PYTHON).with_name("cilia")), "observe", "--node", "n1", "--last", "2000",
                          "-o", "json", *flags], capture_output=True, text=True, timeout=30, check=True)
    return [json.loads(line)["flow"] for line in out.stdout.splitlines() if line.strip()]


def drop_flows() -> list[dict[str, Any]]:
    with AgentClient(NodePaths("n1").socket) as client:
        return [r["flow"] for r in client.stream_lines("/v1/flows", {"last": 4000, "verdict": ["DROPPED"]})]


def l7_flow(path: str, verdict: str, source: str) -> list[dict[str, Any]]:
    return [f for f in flows("--type", "l7", "--verdict", verdict)
            if f.get("l7", {}).get("http", {}).get("url", "").endswith(path) and f["IP"]["source"] == source]


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_the_nodes_own_requests_are_judged_by_the_pods_ingress_l7_rules(lab: Lab, ipv6: bool) -> None:
    before = len(server_log(lab))
    web = lab.address_of("web", ipv6=ipv6)
    result = get(lab, "n1", web, ["/public", "/private", "/public"])
    assert [r[:2] for r in result] == [[200, "web\n"], [403, "Access denied"], [200, "web\n"]], result
    client = result[0][2]
    # the denied request never reached the server, which saw the node's own address
    assert server_log(lab)[before:] == [f"GET /public {client}"] * 2
    # the proxy judged the node as the host (1): the L7 flows say so
    denied = wait_for(lambda: l7_flow("/private", "DROPPED", client), 10, 0.2, "no DROPPED L7 flow from the node")
    assert denied[-1]["source"]["identity"] == int(ReservedIdentity.HOST)
    assert denied[-1]["IP"]["destination"] == web and denied[-1]["traffic_direction"] == "INGRESS"
    forwarded = wait_for(lambda: l7_flow("/public", "FORWARDED", client), 10, 0.2, "no FORWARDED L7 flow")
    assert forwarded[-1]["source"]["identity"] == int(ReservedIdentity.HOST)


def test_a_nodeport_connection_to_the_local_backend_is_judged_as_the_world(lab: Lab) -> None:
    before = len(server_log(lab))
    world = lab.address_of("world1")
    result = get(lab, "world1", lab.address_of("n1"), ["/public", "/private"], NODE_PORT)
    assert [r[:2] for r in result] == [[200, "web\n"], [403, "Access denied"]], result
    assert server_log(lab)[before:] == [f"GET /public {world}"]
    denied = wait_for(lambda: l7_flow("/private", "DROPPED", world), 10, 0.2, "no DROPPED L7 flow from world1")
    assert denied[-1]["source"]["identity"] == int(ReservedIdentity.WORLD)


def test_pod_to_pod_is_not_hairpinned_and_stays_denied_without_a_rule(lab: Lab) -> None:
    # the other pod has no identity the rule admits: dropped in BPF, the proxy never sees it
    before = len(server_log(lab))
    assert get(lab, "other", lab.address_of("web"), ["/public"])[0][0] == "error"
    assert server_log(lab)[before:] == []


def test_proxy_down_drops_the_nodes_connection_as_proxy_unavailable(lab: Lab) -> None:
    lab.stop_proxy("n1")
    try:
        before = len(server_log(lab))
        result = get(lab, "n1", lab.address_of("web"), ["/public"])
        assert result[0][0] == "error", "traffic an L7 rule covers passed without the proxy"
        assert server_log(lab)[before:] == []
        drops = [f for f in drop_flows() if f.get("drop_reason_desc") == "PROXY_UNAVAILABLE"
                 and f["IP"]["destination"] == lab.address_of("web")]
        assert drops, f"no flow says proxy unavailable: {drop_flows()[-5:]}"
        assert drops[-1]["source"]["identity"] == int(ReservedIdentity.HOST)
    finally:
        lab.start_proxy("n1")
    assert [r[:2] for r in get(lab, "n1", lab.address_of("web"), ["/public"])] == [[200, "web\n"]]
