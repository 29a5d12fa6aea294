"""Cluster labs for tests and benchmarks: topologies on a 3-member etcd (the policy topology spread
over three nodes, the lab-cluster example in either routing mode), a lab that is only handed over
once every node's ipcache knows every other node's pods, objects applied through one node and waited
for on all of them, the per-node state tests compare after faults, and long-lived echo connections
that show whether a connection survived one.

Everything here reads the agents' API (and etcd's keys through a member's unix socket); nothing
reaches into an agent's internals.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cilia.api.client import AgentClient, AgentError, AgentUnavailable
from cilia.api.models import ApplyRequest
from cilia.lab.lab import PYTHON, Lab
from cilia.lab.topology import parse_topology
from cilia.paths import NodePaths
from cilia.testing.labs import CLUSTER, running_lab
from cilia.testing.reach import NAMESPACES, PODS, policy_topology
from cilia.testing.wait import wait_for

ROUTING_MODES = ("native", "tunnel")
NODES = ("n1", "n2", "n3")
POLICY_KINDS = ("NetworkPolicy", "CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")
# The policy topology spread over three nodes: every pod a on n1, b on n2, c on n3. Pods sharing a
# letter share a node, so one matrix has same-node and cross-node pairs for every policy.
SPREAD = {"a": "n1", "b": "n2", "c": "n3"}


def cluster_topology(routing: str = "native", source: Path | Mapping[str, Any] = CLUSTER,
                     **fields: Any) -> dict[str, Any]:
    """A cluster topology dict (default examples/lab-cluster.yaml) with `routing` and any top-level
    fields replaced."""
    data: dict[str, Any] = (yaml.safe_load(source.read_text()) if isinstance(source, Path)
                            else copy.deepcopy(dict(source)))
    data.update({"kvstore": "etcd", "routing": routing, **fields})
    return data


def spread_policy_topology(routing: str = "native") -> dict[str, Any]:
    """cilia.testing.reach.policy_topology (x, y, z x a, b, c, world1) on three nodes sharing etcd."""
    data = policy_topology()
    data["nodes"] = [{"name": name} for name in NODES]
    for pod in data["pods"]:
        pod["node"] = SPREAD[pod["name"]]
    data.update({"kvstore": "etcd", "routing": routing})
    assert {p["name"] for p in data["pods"]} == set(PODS) and len(data["pods"]) == len(NAMESPACES) * len(PODS)
    return data


def api(node: str, timeout: float = 60) -> AgentClient:
    return AgentClient(NodePaths(node).socket, timeout=timeout)


# ----- what a node knows ---------------------------------------------------------------------------
def endpoint_identities(node: str) -> dict[str, int]:
    """The node's own pods: each IP -> the identity its agent gave it."""
    with api(node) as client:
        found: dict[str, int] = {}
        for endpoint in client.list_endpoints():
            for ip in (endpoint.ipv4, endpoint.ipv6):
                if ip:
                    found[ip] = endpoint.identity
        return found


def ipcache(node: str) -> dict[str, dict[str, Any]]:
    """The node's ipcache map, prefix ("10.200.2.5/32") -> {identity, tunnel_endpoint}."""
    with api(node) as client:
        return {row["prefix"]: row for row in client.get("/v1/bpf/ipcache")}


def identities(node: str) -> dict[tuple[str, ...], int]:
    """The identities the node knows: sorted labels -> number."""
    with api(node) as client:
        return {tuple(sorted(i.labels)): i.id for i in client.list_identities()}


def policies(node: str) -> list[tuple[str, str, str, str]]:
    """The policy objects the node's store holds: (kind, namespace, name, spec as JSON), sorted."""
    with api(node) as client:
        return sorted((kind, str(o["metadata"].get("namespace", "")), o["metadata"]["name"],
                       json.dumps(o.get("spec"), sort_keys=True))
                      for kind in POLICY_KINDS for o in client.get("/v1/resources", {"kind": kind}))


def node_names(node: str) -> list[str]:
    """The cluster's nodes as this node's agent lists them (GET /v1/nodes)."""
    with api(node) as client:
        listed = client.get("/v1/nodes")
    rows = listed.get("nodes", listed) if isinstance(listed, dict) else listed
    return sorted(str(row["name"]) for row in rows)


def host_prefix(ip: str) -> str:
    return f"{ip}/{128 if ':' in ip else 32}"


def ipcache_gaps(lab: Lab) -> list[str]:
    """What some node's ipcache still lacks or has wrong: every pod IP of every *other* node with the
    identity its own node gave it. Empty when the cluster has converged."""
    nodes = list(lab.state["nodes"])
    owned = {node: endpoint_identities(node) for node in nodes}
    gaps = []
    for node in nodes:
        cache = ipcache(node)
        for owner, ips in owned.items():
            if owner == node:
                continue
            for ip, identity in ips.items():
                row = cache.get(host_prefix(ip))
                if row is None or row["identity"] != identity:
                    gaps.append(f"{node}: {ip} (on {owner}) is "
                                f"{'missing' if row is None else 'identity ' + str(row['identity'])}, "
                                f"expected identity {identity}")
    return gaps


def wait_converged(lab: Lab, timeout: float = 30.0) -> None:
    """Bounded: until every node's ipcache has every remote pod with its real identity."""
    last: list[str] = []

    def converged() -> bool:
        try:
            last[:] = ipcache_gaps(lab)
        except (AgentUnavailable, AgentError) as exc:
            last[:] = [str(exc)]
        return not last

    wait_for(converged, timeout, 0.2, lambda: "cluster not converged:\n  " + "\n  ".join(last[:20]))


@contextmanager
def running_cluster_lab(source: Mapping[str, Any], agent_args: list[str] | None = None,
                        timeout: float = 60.0) -> Iterator[Lab]:
    """A cluster lab (always torn down), handed over once it has converged."""
    with running_lab(parse_topology(dict(source), "cluster topology"), agent_args) as lab:
        wait_converged(lab, timeout)
        yield lab


# ----- policy through one node, waited for on all --------------------------------------------------
def wait_policies_everywhere(lab: Lab, timeout: float = 30.0) -> None:
    """Until every node holds the same policy objects (its watch of etcd delivered them) and every
    node's endpoints run the policy revision that holds them."""
    nodes = list(lab.state["nodes"])
    reference: list[Any] = []
    differing: list[str] = []

    def same() -> bool:
        try:
            seen = {node: policies(node) for node in nodes}
        except (AgentUnavailable, AgentError) as exc:
            differing[:] = [str(exc)]
            return False
        reference[:] = seen[nodes[0]]
        differing[:] = [n for n in nodes if seen[n] != reference]
        return not differing

    wait_for(same, timeout, 0.1, lambda: f"nodes {differing} do not hold {nodes[0]}'s policies")
    for node in nodes:
        with api(node) as client:
            client.wait_policy(None, timeout, check=True)


def apply(lab: Lab, objects: list[dict[str, Any]], via: str = "n1", timeout: float = 30.0) -> None:
    """Apply through one node (into etcd), then wait for it on every node."""
    with api(via) as client:
        client.apply(ApplyRequest(objects=objects))
    wait_policies_everywhere(lab, timeout)


def apply_text(lab: Lab, text: str, via: str = "n1", timeout: float = 30.0) -> None:
    apply(lab, [o for o in yaml.safe_load_all(text) if o], via, timeout)


def clear_policies(lab: Lab, via: str = "n1", timeout: float = 30.0) -> None:
    """Every policy deleted (through one node) and every node back on no policy."""
    with api(via) as client:
        objects = [{"kind": kind, "metadata": {k: v for k, v in o["metadata"].items() if k in ("name", "namespace")}}
                   for kind in POLICY_KINDS for o in client.get("/v1/resources", {"kind": kind})]
        if objects:
            client.delete(ApplyRequest(objects=objects))
    wait_policies_everywhere(lab, timeout)


# ----- state compared across nodes ----------------------------------------------------------------
def cluster_state(lab: Lab, node: str) -> dict[str, Any]:
    """What must be equal on every node once the cluster converged: the identity numbers of the lab's
    pods' label sets, each pod IP's identity in the ipcache (remote and local), the policies."""
    owned = {ip: ident for owner in lab.state["nodes"] for ip, ident in endpoint_identities(owner).items()}
    cache = ipcache(node)
    return {
        "ipcache": {ip: (cache.get(host_prefix(ip)) or {}).get("identity") for ip in owned},
        "identities": {labels: number for labels, number in identities(node).items() if number in owned.values()},
        "policies": policies(node),
    }


def etcd_keys(lab: Lab, prefix: str) -> list[str]:
    """Keys under `prefix`, read through the first answering member's unix socket."""
    for member in lab.etcd.members:
        if lab.etcd.pid(member.name) is None:
            continue
        result = subprocess.run(["etcdctl", f"--endpoints=unix://{member.socket_file}", "--command-timeout=3s",
                                 "get", "--prefix", prefix, "--keys-only"], capture_output=True, text=True,
                                timeout=20, check=False, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        if result.returncode == 0:
            return sorted(line for line in result.stdout.split() if line)
    raise RuntimeError("no etcd member answered")


# ----- connections that must survive faults --------------------------------------------------------
_ECHO = """
import socket, sys
address, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((address, port), timeout=3)
peer = s.recv(64).decode().strip()
print(peer, flush=True)
for line in sys.stdin:
    try:
        s.sendall(line.encode())
        got = b""
        while len(got) < len(line):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        ok = got.decode() == line
    except OSError:
        ok = False
    print("ok" if ok else "cut", flush=True)
"""


@dataclass
class EchoConnection:
    """One TCP connection from a lab host to an echo server (lab pods' tcp ports), kept open: each
    echo() sends a line on the same connection and says whether it came back."""

    process: subprocess.Popen[str]
    peer: str  # the server's greeting: which pod answered

    def echo(self, word: str) -> bool:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(word + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip() == "ok"

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@contextmanager
def echo_connection(lab: Lab, source: str, target: str, port: int = 80, *,
                    ipv6: bool = False) -> Iterator[EchoConnection]:
    """`with echo_connection(lab, "client1", "web2") as conn: assert conn.echo("x")`: the connection
    is made from source's netns (and cgroup: service addresses take the socket LB there)."""
    process = lab.popen(source, [PYTHON, "-c", _ECHO, lab.address_of(target, ipv6), str(port)])
    assert process.stdout is not None
    peer = process.stdout.readline().strip()
    connection = EchoConnection(process, peer)
    try:
        if not peer:
            raise RuntimeError(f"no connection from {source} to {target}:{port}")
        yield connection
    finally:
        connection.close()


def probes(lab: Lab, source: str, address: str, port: int, protocol: str = "tcp", count: int = 1,
           timeout: float = 2.0) -> list[dict[str, Any]]:
    """`count` new connections at once from `source` (each its own socket, so each makes its own
    backend choice when `address` is a service's); the probe's answers, with the `peer` that greeted."""
    request = [{"to": address, "port": port, "protocol": protocol}] * count
    result = lab.exec(source, [PYTHON, "-m", "cilia.lab.probe", "--many", json.dumps(request),
                               "--timeout", str(timeout)], timeout=timeout + 30)
    try:
        answers: list[dict[str, Any]] = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise RuntimeError(f"probes from {source} failed: {result.stderr.strip()}") from exc
    return answers


def peers(answers: list[dict[str, Any]]) -> set[str]:
    """Who answered (the pods' greetings), and the verdicts of the probes nobody answered."""
    return {str(a.get("peer")) if a["verdict"] == "connected" else str(a["verdict"]) for a in answers}
