"""Services end to end: real connections through the socket hooks (pods in the node's cgroup), the
per-packet path (a pod outside it), and the node's device program (external hosts); spread,
affinity, backend states, zero backends, hairpin, live updates, IPv6, policy on the backend,
bad input, agent restart, flows and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from cilia.api.client import AgentClient, AgentError
from cilia.api.models import ApplyRequest
from cilia.lab.lab import PYTHON, Lab
from cilia.lab.topology import PodSpec, PortSpec, parse_topology
from cilia.lb.maglev import DEFAULT_SIZE as MAGLEV_DEFAULT_SIZE
from cilia.paths import NodePaths
from cilia.testing import wait_for
from cilia.testing.labs import running_lab

WEB_PORTS = [{"port": 8080, "protocol": "tcp", "name": "http"}, {"port": 5353, "protocol": "udp", "name": "dns"}]
TOPOLOGY = {
    "nodes": [{"name": "n1"}],
    "pods": [
        {"name": "client", "labels": {"app": "client"}},
        {"name": "rawclient", "labels": {"app": "rawclient"}, "socketLB": False},
        {"name": "web1", "labels": {"app": "web"}, "ports": WEB_PORTS},
        {"name": "web2", "labels": {"app": "web"}, "ports": WEB_PORTS},
        {"name": "solo", "labels": {"app": "solo"}, "ports": [{"port": 8080, "protocol": "tcp"}]},
        {"name": "loner", "labels": {"app": "loner"}, "socketLB": False, "ports": [{"port": 9090, "protocol": "tcp"}]},
    ],
    "externals": [{"name": "world1"}],
}
CILIA = os.path.join(os.path.dirname(sys.executable), "cilia")


def service(name: str, spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
                           "spec": spec}
    if status:
        obj["status"] = status
    return obj


WEB = service("web", {
    "type": "NodePort", "clusterIPs": ["10.96.0.10", "fd00:96::10"], "ipFamilyPolicy": "PreferDualStack",
    "selector": {"app": "web"},
    "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
              {"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"}]})
WEB_LB = service("web-lb", {
    "type": "LoadBalancer", "clusterIP": "10.96.0.20", "externalIPs": ["203.0.113.20"], "selector": {"app": "web"},
    "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30081}]},
    {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}, {"ip": "2001:db8:203::10"}]}})
STICKY = service("sticky", {
    "clusterIP": "10.96.0.11", "selector": {"app": "web"}, "sessionAffinity": "ClientIP",
    "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 1}}, "ports": [{"port": 80, "targetPort": 8080}]})
EMPTY = service("empty", {
    "clusterIP": "10.96.0.12", "selector": {"app": "nobody"},
    "ports": [{"name": "tcp", "port": 80, "targetPort": 8080}, {"name": "udp", "port": 53, "protocol": "UDP"}]})
HAIRPIN = service("hairpin", {"clusterIP": "10.96.0.13", "selector": {"app": "solo"},
                              "ports": [{"port": 80, "targetPort": 8080}]})
HAIRPIN_RAW = service("hairpin-raw", {"clusterIP": "10.96.0.14", "selector": {"app": "loner"},
                                      "ports": [{"port": 80, "targetPort": 9090}]})
SLICED = service("sliced", {"clusterIP": "10.96.0.15", "ports": [{"name": "http", "port": 80}]})


def web_slice(lab: Lab, terminating: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "sliced-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "sliced"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [lab.address_of(pod)], "nodeName": "n1",
                       "targetRef": {"kind": "Pod", "namespace": "default", "name": pod},
                       "conditions": ({"ready": False, "serving": True, "terminating": True}
                                      if pod in terminating else {"ready": True})}
                      for pod in ("web1", "web2")],
    }


def apply(*objects: dict[str, Any]) -> None:
    """Apply; a policy among the objects is enforced on return (regeneration runs in the background)."""
    with AgentClient(NodePaths("n1").socket, timeout=60) as api:
        api.apply(ApplyRequest(objects=list(objects)), wait=60)


def delete(*objects: dict[str, Any]) -> None:
    with AgentClient(NodePaths("n1").socket, timeout=60) as api:
        api.delete(ApplyRequest(objects=list(objects)))


@pytest.fixture(scope="module")
def slab() -> Iterator[Lab]:
    with running_lab(parse_topology(TOPOLOGY, "services topology")) as running:
        apply(WEB, WEB_LB, STICKY, EMPTY, HAIRPIN, HAIRPIN_RAW, SLICED, web_slice(running))
        yield running


def probes(lab: Lab, source: str, address: str, port: int, protocol: str = "tcp", count: int = 1,
           timeout: float = 2.0) -> list[dict[str, Any]]:
    """`count` new connections at once (each its own socket, so each gets its own backend choice)."""
    request = [{"to": address, "port": port, "protocol": protocol}] * count
    result = lab.exec(source, [PYTHON, "-m", "cilia.lab.probe", "--many", json.dumps(request),
                               "--timeout", str(timeout)], timeout=timeout + 30)
    answers: list[dict[str, Any]] = json.loads(result.stdout)
    return answers


def peers(answers: list[dict[str, Any]]) -> Counter[str]:
    return Counter(str(a.get("peer")) if a["verdict"] == "connected" else a["verdict"] for a in answers)


def flows(**filters: str) -> list[dict[str, Any]]:
    args = [CILIA, "observe", "--node", "n1", "-o", "json", "--last", "500"]
    for key, value in filters.items():
        args += [f"--{key.replace('_', '-')}", value]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=30).stdout
    return [json.loads(line)["flow"] for line in out.splitlines() if line.strip()]


class Echo:
    """A long-lived TCP connection from a lab pod: greets with the backend's name, then echoes."""

    def __init__(self, lab: Lab, source: str, address: str, port: int) -> None:
        script = (
            "import socket,sys\n"
            f"s=socket.create_connection(('{address}',{port}),timeout=5)\n"
            "print(s.recv(64).decode().strip(), flush=True)\n"
            "for line in sys.stdin:\n"
            "    s.sendall(line.encode()); got=s.recv(64).decode()\n"
            "    print('ok' if got==line else 'bad', flush=True)\n"
        )
        self.process = lab.popen(source, [sys.executable, "-c", script])
        assert self.process.stdout is not None
        self.backend = self.process.stdout.readline().strip()

    def echo(self, word: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(word + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.mark.parametrize("source", ["client", "rawclient", "n1"])
def test_clusterip_spreads_tcp_and_udp(slab: Lab, source: str) -> None:
    """client: a pod in the node's cgroup (socket path); rawclient: a pod outside it (per-packet path);
    n1: a process of the node itself, in the node's host cgroup (socket path)."""
    tcp = peers(probes(slab, source, "10.96.0.10", 80, count=24))
    assert set(tcp) == {"web1", "web2"}, tcp
    udp = peers(probes(slab, source, "10.96.0.10", 53, "udp", count=24))
    assert set(udp) == {"web1", "web2"}, udp


def test_socket_path_translates_at_connect_per_packet_path_in_tc(slab: Lab) -> None:
    """The pod in the node's cgroup is translated by the socket hooks (SOCK flows, nothing on the
    wire to the ClusterIP); the pod outside it by the tc program (trace flows naming the service)."""
    probes(slab, "client", "10.96.0.10", 80, count=2)
    probes(slab, "rawclient", "10.96.0.10", 80, count=2)
    sock = [f for f in flows() if f.get("Type") == "SOCK"]
    assert any(f["source"].get("pod_name") == "client" and f["IP"]["destination"] == "10.96.0.10" for f in sock)
    assert not any(f["source"].get("pod_name") == "rawclient" for f in sock)
    # Hubble's per-packet service flows name the service (destination_service on requests,
    # source_service on replies); the request's destination is the backend chosen
    packet = [f for f in flows(from_pod="default/rawclient") if f.get("destination_service") or f.get("source_service")]
    assert packet, "per-packet service flows from rawclient"
    tcp = [f for f in packet if f.get("l4", {}).get("TCP", {}).get("destination_port") == 8080]
    assert tcp and all(f["destination_service"] == {"name": "web", "namespace": "default"} for f in tcp)
    backends = {f"{f['IP']['destination']}:8080" for f in tcp}
    assert backends <= {f"{slab.address_of('web1')}:8080", f"{slab.address_of('web2')}:8080"}, backends


def test_nodeport_loadbalancer_externalip_from_outside(slab: Lab) -> None:
    node = slab.address_of("n1")
    for address, port in ((node, 30080), ("203.0.113.10", 80), ("203.0.113.20", 80), (node, 30081)):
        got = peers(probes(slab, "world1", address, port, count=12))
        assert set(got) <= {"web1", "web2"} and sum(got.values()) == 12, (address, port, got)
    v6 = peers(probes(slab, "world1", slab.address_of("n1", ipv6=True), 30080, count=6))
    assert set(v6) <= {"web1", "web2"} and sum(v6.values()) == 6, v6
    lb6 = peers(probes(slab, "world1", "2001:db8:203::10", 80, count=6))
    assert set(lb6) <= {"web1", "web2"} and sum(lb6.values()) == 6, lb6


def test_clusterip_is_not_reachable_from_outside(slab: Lab) -> None:
    assert probes(slab, "world1", "10.96.0.10", 80, timeout=1.0)[0]["verdict"] != "connected"


@pytest.mark.parametrize("source", ["client", "rawclient"])
def test_ipv6_clusterip(slab: Lab, source: str) -> None:
    slab.wait_ipv6_settled()
    got = peers(probes(slab, source, "fd00:96::10", 80, count=16))
    assert set(got) == {"web1", "web2"}, got
    udp = peers(probes(slab, source, "fd00:96::10", 53, "udp", count=8))
    assert set(udp) <= {"web1", "web2"} and sum(udp.values()) == 8, udp


@pytest.mark.parametrize("source", ["client", "rawclient"])
def test_session_affinity_holds_then_expires(slab: Lab, source: str) -> None:
    first = peers(probes(slab, source, "10.96.0.11", 80, count=1))
    sticky = next(iter(first))
    assert sticky in ("web1", "web2")
    for _ in range(3):  # within the 1 s timeout every new connection gets the same backend
        assert peers(probes(slab, source, "10.96.0.11", 80, count=8)) == Counter({sticky: 8})
    # Idle past the timeout, the entry is stale: the next choice is random again, so within a few
    # rounds it lands on the other backend (each round: a fresh choice, then it sticks).
    seen = {sticky}
    for _ in range(14):
        time.sleep(2.2)
        got = peers(probes(slab, source, "10.96.0.11", 80, count=1))
        seen |= set(got)
        if seen == {"web1", "web2"}:
            return
    pytest.fail(f"affinity never expired: every choice after the timeout was {sticky}")


@pytest.mark.parametrize("source", ["client", "rawclient"])
def test_zero_backends_refused_promptly(slab: Lab, source: str) -> None:
    start = time.monotonic()
    answer = probes(slab, source, "10.96.0.12", 80, timeout=5.0)[0]
    took = time.monotonic() - start
    assert answer["verdict"] == "refused", answer
    assert took < 3.0, f"a service without backends must refuse at once, took {took:.1f} s"
    if source == "client":  # the socket hooks refuse UDP connects too
        assert probes(slab, source, "10.96.0.12", 53, "udp", timeout=5.0)[0]["verdict"] == "refused"
    drops = [f for f in flows(verdict="DROPPED") if f.get("drop_reason_desc") == "SERVICE_BACKEND_NOT_FOUND"]
    assert source == "client" or drops, "the per-packet path reports the drop it answered with a reset"


@pytest.mark.parametrize("source", ["client", "rawclient"])
def test_terminating_backend_finishes_established_gets_no_new(slab: Lab, source: str) -> None:
    conn = Echo(slab, source, "10.96.0.15", 80)
    try:
        assert conn.backend in ("web1", "web2")
        assert conn.echo("before") == "ok"
        apply(web_slice(slab, terminating={conn.backend}))
        other = "web2" if conn.backend == "web1" else "web1"
        assert peers(probes(slab, source, "10.96.0.15", 80, count=20)) == Counter({other: 20})
        assert conn.echo("while-terminating") == "ok"
        with AgentClient(NodePaths("n1").socket) as api:
            row = api.get("/v1/services/default/sliced")
        states = {b["address"]: b["state"] for b in row["frontends"][0]["backends"]}
        assert states[f"{slab.address_of(conn.backend)}:8080"] == "terminating"
    finally:
        conn.close()
        apply(web_slice(slab))
    assert set(peers(probes(slab, source, "10.96.0.15", 80, count=20))) == {"web1", "web2"}


def test_quarantined_backend_gets_no_new_connections(slab: Lab) -> None:
    web1 = f"{slab.address_of('web1')}:8080"
    run = subprocess.run([CILIA, "service", "backend", "default/web", web1, "quarantined", "--node", "n1"],
                         capture_output=True, text=True, timeout=30, check=False)
    try:
        assert run.returncode == 0, run.stderr
        assert peers(probes(slab, "client", "10.96.0.10", 80, count=16)) == Counter({"web2": 16})
        assert peers(probes(slab, "rawclient", "10.96.0.10", 80, count=16)) == Counter({"web2": 16})
    finally:
        subprocess.run([CILIA, "service", "backend", "default/web", web1, "active", "--node", "n1"],
                       capture_output=True, text=True, timeout=30, check=True)
    assert set(peers(probes(slab, "client", "10.96.0.10", 80, count=24))) == {"web1", "web2"}


def test_hairpin_pod_reaches_itself_through_its_service(slab: Lab) -> None:
    assert peers(probes(slab, "solo", "10.96.0.13", 80, count=4)) == Counter({"solo": 4})  # socket path
    assert peers(probes(slab, "loner", "10.96.0.14", 80, count=4)) == Counter({"loner": 4})  # per-packet path


def test_live_updates_follow_pods_and_the_service(slab: Lab) -> None:
    slab.add_pod(PodSpec("web3", "default", "n1", {"app": "web"}, None,
                         (PortSpec(8080, "tcp", "http"), PortSpec(5353, "udp", "dns"))))
    wait_for(lambda: "web3" in peers(probes(slab, "client", "10.96.0.10", 80, count=24)), 10, 0.1,
             "a new pod matching the selector never became a backend")
    slab.cni("DEL", slab.state["pods"]["default/web3"])
    assert "web3" not in peers(probes(slab, "client", "10.96.0.10", 80, count=24))
    # the service itself goes away: its ClusterIP stops answering
    delete(HAIRPIN)
    try:
        assert probes(slab, "solo", "10.96.0.13", 80, timeout=1.0)[0]["verdict"] != "connected"
    finally:
        apply(HAIRPIN)
    assert peers(probes(slab, "solo", "10.96.0.13", 80, count=2)) == Counter({"solo": 2})


def test_policy_is_evaluated_against_the_backend(slab: Lab) -> None:
    policy = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
              "metadata": {"name": "web-from-client", "namespace": "default"},
              "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                       "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}]}}
    apply(policy)
    try:
        assert set(peers(probes(slab, "client", "10.96.0.10", 80, count=12))) <= {"web1", "web2"}
        denied = probes(slab, "rawclient", "10.96.0.10", 80, timeout=1.0)[0]
        assert denied["verdict"] == "timed-out", denied
        drops = [f for f in flows(verdict="DROPPED", from_pod="default/rawclient")
                 if f.get("drop_reason_desc") in ("POLICY_DENIED", "POLICY_DENY")]  # Hubble's names
        assert drops and drops[-1]["destination"].get("pod_name") in ("web1", "web2"), drops[-1:]
    finally:
        delete(policy)


def test_bad_service_is_rejected_and_the_old_one_keeps_working(slab: Lab) -> None:
    bad = json.loads(json.dumps(WEB))
    bad["spec"]["ports"][0]["port"] = 70000
    with pytest.raises(AgentError, match=r"Service default/web: field 'spec.ports\[0\].port'"):
        apply(bad)
    assert set(peers(probes(slab, "client", "10.96.0.10", 80, count=16))) == {"web1", "web2"}
    bad_slice = web_slice(slab)
    bad_slice["endpoints"][0]["addresses"] = ["not-an-ip"]
    with pytest.raises(AgentError, match=r"EndpointSlice default/sliced-1: field 'endpoints\[0\].addresses\[0\]'"):
        apply(bad_slice)
    assert set(peers(probes(slab, "client", "10.96.0.15", 80, count=16))) == {"web1", "web2"}


def test_cli_lists_services_lb_map_and_maglev(slab: Lab) -> None:
    def cli(*args: str) -> Any:
        run = subprocess.run([CILIA, *args, "--node", "n1", "-o", "json"], capture_output=True, text=True,
                             timeout=30, check=True)
        return json.loads(run.stdout)

    services = {f"{s['namespace']}/{s['name']}": s for s in cli("service", "list")}
    web = services["default/web"]
    frontends = {f["address"]: f for f in web["frontends"]}
    assert {"10.96.0.10:80", "[fd00:96::10]:80", f"{slab.address_of('n1')}:30080"} <= set(frontends)
    assert {b["state"] for b in frontends["10.96.0.10:80"]["backends"]} == {"active"}
    assert len(frontends["10.96.0.10:80"]["backends"]) == 2
    lb = {row["frontend"]: row for row in cli("bpf", "lb", "list")}
    assert len(lb["10.96.0.10:80"]["backends"]) == 2 and "maglev" in lb[f"{slab.address_of('n1')}:30080"]["flags"]
    assert lb["10.96.0.11:80"]["affinity_timeout"] == 1 and "affinity" in lb["10.96.0.11:80"]["flags"]
    assert lb["10.96.0.12:80"]["backends"] == []
    tables = cli("bpf", "lb", "maglev", "get", "default/web")
    assert tables and all(t["size"] == MAGLEV_DEFAULT_SIZE for t in tables)
    counts = sorted(tables[0]["entries_per_backend"].values())
    assert len(counts) == 2 and counts[1] - counts[0] <= 1 and sum(counts) == MAGLEV_DEFAULT_SIZE


def test_agent_kill_9_keeps_services_and_restart_rewrites_nothing(slab: Lab) -> None:
    conn = Echo(slab, "rawclient", "10.96.0.10", 80)
    try:
        assert conn.echo("before") == "ok"
        pid = int(slab.state["nodes"]["n1"]["agent_pid"])
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        assert conn.echo("agent-down") == "ok"
        for source in ("client", "rawclient"):  # new connections too, with no agent at all
            assert set(peers(probes(slab, source, "10.96.0.10", 80, count=16))) == {"web1", "web2"}
        assert set(peers(probes(slab, "world1", slab.address_of("n1"), 30080, count=6))) <= {"web1", "web2"}
        slab.restart_agent("n1", kill=False)
        assert conn.echo("after") == "ok"
        with AgentClient(NodePaths("n1").socket) as api:
            status = api.status()
        assert status.services >= 7
        assert status.service_sync_operations == 0, "a restarted agent found the LB maps as it wanted them"
    finally:
        conn.close()
