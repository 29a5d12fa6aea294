"""Two real agents (`--kvstore etcd`) on the lab's fabric with a real etcd (cilia.testing.etcd,
reached through its unix socket from the nodes' namespaces): they register, publish their pods'
IPs, and program each other's pods into their ipcache, so policy on n2 sees the real identity of
a pod on n1. With etcd down an agent restarted by kill -9 restores its endpoints and keeps
enforcing; a CNI ADD succeeds when the pod's identity is cached and fails fast, leaving nothing,
when it is not; everything converges when etcd is back, without a restart. A node that goes
away disappears from the other within its lease time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cilia.api.client import AgentClient
from cilia.api.models import ApplyRequest
from cilia.lab.lab import Lab, LabError, cleanup_leftovers, pod_object
from cilia.lab.process import kill_pid
from cilia.lab.topology import PodSpec
from cilia.paths import NodePaths
from cilia.testing.etcd import running_etcd
from cilia.testing.labs import topology_of
from cilia.testing.wait import wait_for

TTL = 4
CILIA = str(Path(sys.executable).with_name("cilia"))
TOPOLOGY: dict[str, Any] = {
    "nodes": [{"name": "n1"}, {"name": "n2"}],
    "namespaces": [{"name": "default"}],
    "pods": [
        {"name": "client", "namespace": "default", "node": "n1", "labels": {"app": "client"}},
        {"name": "other", "namespace": "default", "node": "n1", "labels": {"app": "other"}},
        {"name": "web", "namespace": "default", "node": "n2", "labels": {"app": "web"},
         "ports": [{"port": 80, "protocol": "tcp"}]},
    ],
}
WEB_FROM_CLIENT = {
    "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "web-from-client", "namespace": "default"},
    "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
             "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                          "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]},
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Any, Lab, list[str]]]:
    # The lab's sweep of leftovers removes every /run/cilia/* directory, etcd's sockets too: sweep
    # first, then etcd, then the lab (its teardown sweeps again, after which etcd is stopped).
    cleanup_leftovers()
    with running_etcd(1) as etcd:
        args = ["--kvstore", "etcd", "--kvstore-endpoints", ",".join(etcd.unix_endpoints),
                "--kvstore-lease-ttl", str(TTL), "--ipv4-native-routing-cidr", "10.200.0.0/16",
                "--ipv6-native-routing-cidr", "fd00:200::/40"]
        lab = Lab.up(topology_of(TOPOLOGY), agent_args=args)
        try:
            yield etcd, lab, args
        finally:
            lab.down()


def api(node: str) -> AgentClient:
    return AgentClient(NodePaths(node).socket, timeout=30)


def endpoint_of(node: str, pod: str) -> dict[str, Any]:
    with api(node) as client:
        return next(e.model_dump() for e in client.list_endpoints() if e.pod_name == pod)


def ipcache(node: str) -> dict[str, dict[str, Any]]:
    with api(node) as client:
        return {row["prefix"]: row for row in client.get("/v1/bpf/ipcache")}


def node_names(node: str) -> set[str]:
    with api(node) as client:
        return {n.name for n in client.list_nodes()}


def verdict(lab: Lab, source: str, target: str) -> str:
    return str(lab.probe(source, target, 80, timeout=1.0)["verdict"])


def test_nodes_register_and_status_reports_the_kvstore(cluster: tuple[Any, Lab, list[str]]) -> None:
    wait_for(lambda: node_names("n1") == {"n1", "n2"} == node_names("n2"), 20, message="both nodes registered")
    with api("n1") as client:
        nodes = {n.name: n for n in client.list_nodes()}
        status = client.status()
    assert nodes["n1"].local and not nodes["n2"].local
    assert nodes["n2"].ipv4 == "192.0.2.12" and nodes["n2"].pod_cidrs == ["10.200.2.0/24", "fd00:200:2::/64"]
    assert nodes["n2"].routing_mode == "native" and nodes["n2"].health == "ok"
    assert status.kvstore is not None and status.kvstore.backend == "etcd" and status.kvstore.reachable
    assert status.kvstore.lease and status.kvstore.leader_id and status.kvstore.endpoint
    assert {n.name for n in status.cluster_nodes} == {"n1", "n2"}
    cli = subprocess.run([CILIA, "node", "list", "--node", "n1"], capture_output=True, text=True, timeout=30,
                         check=False, env={**os.environ, "COLUMNS": "200"})
    assert cli.returncode == 0, cli.stderr
    assert "n1 (local)" in cli.stdout and "10.200.2.0/24" in cli.stdout and "native" in cli.stdout
    status_cli = subprocess.run([CILIA, "status", "--node", "n2"], capture_output=True, text=True, timeout=30,
                                check=False, env={**os.environ, "COLUMNS": "200"})
    assert "etcd: reachable" in status_cli.stdout and "cluster.nodes" in status_cli.stdout


def test_remote_pods_are_in_the_ipcache_with_their_identity(cluster: tuple[Any, Lab, list[str]]) -> None:
    client = endpoint_of("n1", "client")
    web = endpoint_of("n2", "web")
    wait_for(lambda: ipcache("n2").get(f"{client['ipv4']}/32", {}).get("identity") == client["identity"], 20,
             message="client (n1) in n2's ipcache with its identity")
    wait_for(lambda: ipcache("n1").get(f"{web['ipv6']}/128", {}).get("identity") == web["identity"], 20,
             message="web (n2) in n1's ipcache with its identity")
    # the same label set has the same number everywhere; n2's policy engine knows client's identity
    with api("n2") as n2:
        assert client["identity"] in {i.id for i in n2.list_identities()}


def test_policy_on_n2_sees_the_identity_of_a_pod_on_n1(cluster: tuple[Any, Lab, list[str]]) -> None:
    _etcd, lab, _args = cluster
    with api("n1") as n1:  # applied once, on n1; web's policy is on n2
        n1.apply(ApplyRequest(objects=[WEB_FROM_CLIENT]))
    with api("n2") as n2:
        wait_for(lambda: any(o["metadata"]["name"] == "web-from-client"
                             for o in n2.get("/v1/resources", {"kind": "CiliumNetworkPolicy"})), 20,
                 message="the policy reached n2's store")
        n2.wait_policy(None, 30)
    wait_for(lambda: verdict(lab, "client", "web") == "connected", 20, message="client (n1) -> web (n2) allowed")
    assert verdict(lab, "other", "web") != "connected"


def test_etcd_down_restart_keeps_enforcing_and_converges(cluster: tuple[Any, Lab, list[str]]) -> None:
    etcd, lab, args = cluster
    with api("n2") as n2:  # Pod objects written while etcd is up: same labels as web, and new ones
        n2.apply(ApplyRequest(objects=[pod_object(PodSpec("web2", "default", "n2", {"app": "web"})),
                                       pod_object(PodSpec("lonely", "default", "n2", {"app": "lonely"}))]))
    member = etcd.members[0].name
    etcd.kill(member)
    try:
        lab.restart_agent("n2", kill=True, agent_args=args)  # kill -9, then a new agent
        with api("n2") as n2:
            status = n2.status()
            assert status.restored_endpoints == 1 and not status.kvstore.reachable  # type: ignore[union-attr]
        assert verdict(lab, "client", "web") == "connected"
        assert verdict(lab, "other", "web") != "connected"
        # a pod whose identity this node holds: added from the cache
        started = time.monotonic()
        _cni_add(lab, "web2")
        print(f"CNI ADD (cached identity) with etcd down: {time.monotonic() - started:.2f} s")
        # a new label set needs etcd: a clear error within 10 s, nothing left behind
        before = {e.pod_name for e in _endpoints("n2")}
        started = time.monotonic()
        with pytest.raises(LabError, match="kvstore unreachable") as info:
            _cni_add(lab, "lonely")
        took = time.monotonic() - started
        print(f"CNI ADD (new identity) with etcd down failed in {took:.2f} s: {info.value}")
        assert took < 10
        assert {e.pod_name for e in _endpoints("n2")} == before | {"web2"}
        links = subprocess.run(["ip", "-n", "cilia-n2", "-o", "link"], capture_output=True, text=True,
                               check=True).stdout
        assert sum(1 for line in links.splitlines() if " lxc" in line) == 2  # web and web2 only
    finally:
        etcd.restart(member)
    wait_for(lambda: _status("n2").kvstore.reachable and not _status("n2").kvstore.pending, 30,  # type: ignore[union-attr]
             message="n2 converged with etcd back")
    web2 = endpoint_of("n2", "web2")
    wait_for(lambda: ipcache("n1").get(f"{web2['ipv4']}/32", {}).get("identity") == web2["identity"], 20,
             message="web2, added while etcd was down, reaches n1")
    _cni_add(lab, "lonely")  # and a new identity works again
    assert verdict(lab, "client", "web") == "connected"


def test_a_node_that_goes_away_disappears_within_its_lease(cluster: tuple[Any, Lab, list[str]]) -> None:
    _etcd, lab, args = cluster
    client = endpoint_of("n1", "client")
    wait_for(lambda: f"{client['ipv4']}/32" in ipcache("n2"), 20, message="client in n2's ipcache")
    kill_pid(int(lab.state["nodes"]["n1"]["agent_pid"]))  # kill -9: its lease is neither refreshed nor revoked
    killed = time.monotonic()
    wait_for(lambda: node_names("n2") == {"n2"} and f"{client['ipv4']}/32" not in ipcache("n2"), TTL + 10,
             interval=0.1, message="n1 gone from n2")
    gone = time.monotonic() - killed
    print(f"n1 gone from n2 {gone:.2f} s after kill -9 (lease TTL {TTL} s)")
    assert gone < TTL + 3
    lab.restart_agent("n1", kill=False, agent_args=args)
    wait_for(lambda: node_names("n2") == {"n1", "n2"} and f"{client['ipv4']}/32" in ipcache("n2"), 20,
             message="n1 back on n2")


def _status(node: str) -> Any:
    with api(node) as client:
        return client.status()


def _endpoints(node: str) -> list[Any]:
    with api(node) as client:
        return client.list_endpoints()


def _cni_add(lab: Lab, name: str) -> dict[str, Any]:
    """CNI ADD of a pod whose object is already stored (lab.add_pod would apply it first)."""
    pod = PodSpec(name, "default", "n2", {})
    subprocess.run(["ip", "netns", "add", pod.netns], check=False, capture_output=True)
    entry = {"name": name, "namespace": "default", "node": "n2", "netns": pod.netns,
             "container_id": pod.container_id, "cgroup": None}
    lab.state["pods"][f"default/{name}"] = entry
    lab.save()
    result = lab.cni("ADD", pod)
    entry["ipv4"] = next(ip["address"].split("/")[0] for ip in result["ips"] if ":" not in ip["address"])
    entry["mac"] = result["interfaces"][0]["mac"]
    lab.save()
    return result
