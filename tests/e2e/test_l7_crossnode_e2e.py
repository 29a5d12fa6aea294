"""L7 HTTP policy across two nodes sharing etcd, in both routing modes (native and tunnel), IPv4 and
IPv6: Cilium's Star Wars example with the empire ship on n1 and the deathstar on n2 (the
deathstar's ingress L7 rule judges a client on the other node: `POST /v1/request-landing` 200,
`PUT /v1/exhaust-port` 403 and never in the server's log, the alliance cannot connect), and an
egress L7 rule on a client on n1 whose server is on n2 (the server sees the client pod's own
address, and its ingress policy, which allows only the client's identity, still allows it)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cilia.lab.lab import PYTHON, Lab
from cilia.lab.process import in_netns
from cilia.testing import wait_for
from cilia.testing.cluster import ROUTING_MODES, apply_text, running_cluster_lab
from tests.e2e.test_l7_policy_e2e import SERVER, Call, requests

SERVERS = ("deathstar", "web")


def topology(routing: str) -> dict[str, Any]:
    return {
        "kvstore": "etcd", "etcd": {"members": 1}, "routing": routing,
        "nodes": [{"name": "n1", "podCIDRv4": "10.200.1.0/24", "podCIDRv6": "fd00:200:0:1::/64"},
                  {"name": "n2", "podCIDRv4": "10.200.2.0/24", "podCIDRv6": "fd00:200:0:2::/64"}],
        "namespaces": [{"name": "default"}],
        "pods": [
            {"name": "tiefighter", "namespace": "default", "node": "n1",
             "labels": {"org": "empire", "class": "tiefighter"}},
            {"name": "xwing", "namespace": "default", "node": "n1", "labels": {"org": "alliance", "class": "xwing"}},
            {"name": "probe", "namespace": "default", "node": "n1", "labels": {"app": "probe"}},
            {"name": "deathstar", "namespace": "default", "node": "n2",
             "labels": {"org": "empire", "class": "deathstar"}},
            {"name": "web", "namespace": "default", "node": "n2", "labels": {"app": "web"}},
        ],
        "externals": [],
    }


POLICIES = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1, namespace: default}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: "POST", path: "/v1/request-landing"}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: probe-out, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: probe}}
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: "GET", path: "/ok"}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-from-probe, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: probe}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
"""


def _serve(lab: Lab, name: str, log: Path, body: str, *v6: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(in_netns(lab.netns_of(name), PYTHON, "-c", SERVER, str(log), body, *v6),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module", params=ROUTING_MODES)
def xlab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_cluster_lab(topology(request.param)) as lab:
        logs = tmp_path_factory.mktemp("servers")
        os.chmod(logs, 0o755)
        servers: list[subprocess.Popen[bytes]] = []
        try:
            for name in SERVERS:
                log = logs / f"{name}.log"
                log.touch()
                body = "Ship landed" if name == "deathstar" else name
                servers += [_serve(lab, name, log, body), _serve(lab, name, log, body, "6")]
                wait_for(lambda log=log: log.read_text().count("ready") == 2, 10, 0.1,
                         f"the {name} servers did not start")
                lab.state[f"{name}_log"] = str(log)
            apply_text(lab, POLICIES, via="n1")
            yield lab
        finally:
            for server in servers:
                server.send_signal(signal.SIGTERM)
                server.wait(5)


def server_log(lab: Lab, name: str) -> list[str]:
    return [line for line in Path(lab.state[f"{name}_log"]).read_text().splitlines() if line != "ready"]


def test_the_pods_are_on_two_nodes(xlab: Lab) -> None:
    nodes = {pod["name"]: pod["node"] for pod in xlab.state["pods"].values()}
    assert nodes == {"tiefighter": "n1", "xwing": "n1", "probe": "n1", "deathstar": "n2", "web": "n2"}


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_ingress_l7_rule_judges_a_client_on_another_node(xlab: Lab, ipv6: bool) -> None:
    before = len(server_log(xlab, "deathstar"))
    calls: list[Call] = [("POST", "/v1/request-landing"), ("PUT", "/v1/exhaust-port"), ("POST", "/v1/request-landing")]
    result = requests(xlab, "tiefighter", calls, "deathstar", ipv6=ipv6)
    assert [r[:2] for r in result] == [[200, "Ship landed\n"], [403, "Access denied"], [200, "Ship landed\n"]]
    # one keep-alive connection, the client saw the deathstar's own address
    assert {r[3] for r in result} == {result[0][3]}
    assert {r[2] for r in result} == {xlab.address_of("deathstar", ipv6=ipv6)}
    # the denied request never reached the server, which saw the tiefighter's own address
    client = xlab.address_of("tiefighter", ipv6=ipv6)
    assert server_log(xlab, "deathstar")[before:] == [f"POST /v1/request-landing {client}"] * 2


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_alliance_on_another_node_cannot_connect_to_the_deathstar(xlab: Lab, ipv6: bool) -> None:
    before = len(server_log(xlab, "deathstar"))
    assert requests(xlab, "xwing", [("POST", "/v1/request-landing")], "deathstar", ipv6=ipv6)[0][0] == "error"
    assert server_log(xlab, "deathstar")[before:] == []


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_egress_l7_rule_to_a_server_on_another_node_keeps_the_client_address_and_identity(xlab: Lab,
                                                                                         ipv6: bool) -> None:
    before = len(server_log(xlab, "web"))
    result = requests(xlab, "probe", [("GET", "/ok"), ("GET", "/other"), ("GET", "/ok")], "web", ipv6=ipv6)
    assert [r[:2] for r in result] == [[200, "web\n"], [403, "Access denied"], [200, "web\n"]]
    assert {r[3] for r in result} == {result[0][3]}
    assert {r[2] for r in result} == {xlab.address_of("web", ipv6=ipv6)}
    # the web server's ingress policy allows only the probe's identity: the proxy's upstream leg
    # carried it (VNI or ipcache by the probe's own address, which the server saw)
    client = xlab.address_of("probe", ipv6=ipv6)
    assert server_log(xlab, "web")[before:] == [f"GET /ok {client}"] * 2


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_the_web_servers_ingress_policy_still_denies_other_identities(xlab: Lab, ipv6: bool) -> None:
    before = len(server_log(xlab, "web"))
    assert requests(xlab, "xwing", [("GET", "/ok")], "web", ipv6=ipv6)[0][0] == "error"
    assert server_log(xlab, "web")[before:] == []
