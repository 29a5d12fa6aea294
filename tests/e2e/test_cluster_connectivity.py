"""Pods on different nodes of a 3-node lab on a real 3-member etcd, both routing modes: TCP and UDP,
IPv4 and IPv6, pod -> pod, node -> remote pod, world -> pod; every node's ipcache holds the other
nodes' pods with the identities their nodes gave them (and, tunnelling, the node to tunnel to); the
same labels have the same number everywhere; every node lists every node; the pods' MTU leaves room
for VXLAN; a Service with a backend on n2 and one on n3, reached from n1 through the socket LB, the
per-packet path, and NodePort from an external host; the traffic policies Local across nodes
(a ClusterIP from a pod only to its own node's backends, a NodePort only to the node's own)."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from cilia.api.models import ApplyRequest
from cilia.lab.lab import Lab
from cilia.lab.process import in_netns, sh
from cilia.testing.cluster import (
    NODES,
    ROUTING_MODES,
    api,
    apply,
    cluster_topology,
    echo_connection,
    endpoint_identities,
    etcd_keys,
    identities,
    ipcache,
    ipcache_gaps,
    node_names,
    peers,
    probes,
    running_cluster_lab,
)
from cilia.testing.reach import Target, expect_all, format_mismatches, probe_rows
from cilia.testing.wait import wait_for

VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14

CROSS = {  # each source reaches pods on other nodes (web2, db on n2; web3 on n3)
    "client1": [Target("web2", 80), Target("web2", 53, "udp"), Target("web3", 80), Target("web3", 53, "udp"),
                Target("db", 5432)],
    "client3": [Target("web2", 80), Target("web2", 53, "udp"), Target("db", 5432)],
    "db": [Target("web3", 80), Target("web3", 53, "udp")],
    "web2": [Target("web3", 80)],
}

SERVICE = {
    "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
    "spec": {"type": "NodePort", "clusterIP": "10.96.0.80", "selector": {"app": "web"},
             "ports": [{"name": "echo", "port": 80, "targetPort": "echo", "protocol": "TCP", "nodePort": 30080},
                       {"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"}]},
}
BACKENDS = {"web2", "web3"}
# The same two backends named by an EndpointSlice (no selector): the datapath's part of remote
# backends, whatever the agents' selector path knows of pods on other nodes.
SLICED = {
    "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-sliced", "namespace": "default"},
    "spec": {"type": "NodePort", "clusterIP": "10.96.0.81",
             "ports": [{"name": "echo", "port": 80, "protocol": "TCP", "nodePort": 30081},
                       {"name": "dns", "port": 53, "protocol": "UDP"}]},
}


# Both traffic policies Local: from a pod only its own node's backends, on a node's NodePort only
# that node's (n1 has none: refused from n1's pods, dropped or refused on n1's NodePort).
LOCAL = {
    "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-local", "namespace": "default"},
    "spec": {"type": "NodePort", "clusterIP": "10.96.0.82", "selector": {"app": "web"},
             "internalTrafficPolicy": "Local", "externalTrafficPolicy": "Local",
             "ports": [{"name": "echo", "port": 80, "targetPort": "echo", "protocol": "TCP", "nodePort": 30082}]},
}
NO_BACKEND = {"refused", "timed-out"}
# No clusterIP: allocated once, in etcd, by the node it is applied through (n1)
AUTO = {
    "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-auto", "namespace": "default"},
    "spec": {"selector": {"app": "web"}, "ports": [{"name": "echo", "port": 80, "targetPort": "echo",
                                                    "protocol": "TCP"}]},
}


def web_slice(lab: Lab) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-sliced-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web-sliced"}},
        "addressType": "IPv4",
        "ports": [{"name": "echo", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}],
        "endpoints": [{"addresses": [lab.address_of(pod)], "nodeName": lab.state["pods"][f"default/{pod}"]["node"],
                       "targetRef": {"kind": "Pod", "namespace": "default", "name": pod},
                       "conditions": {"ready": True}} for pod in sorted(BACKENDS)],
    }


@pytest.fixture(scope="module", params=ROUTING_MODES)
def clab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    topology = cluster_topology(request.param)
    # a client outside n1's cgroup: its service traffic takes the per-packet path
    topology["pods"].append({"name": "rawclient", "node": "n1", "labels": {"app": "client"}, "socketLB": False})
    with running_cluster_lab(topology) as lab:
        apply(lab, [SERVICE, SLICED, LOCAL, web_slice(lab)])
        apply(lab, [AUTO], via="n1")
        yield lab


def routing(lab: Lab) -> str:
    return str(lab.state["routing"])


@pytest.mark.parametrize("ipv6", [False, True], ids=["v4", "v6"])
def test_pods_on_different_nodes_talk(clab: Lab, ipv6: bool) -> None:
    got = probe_rows(clab, CROSS, timeout=2.0, ipv6=ipv6)
    expected = expect_all(got)
    assert len(got) == sum(len(t) for t in CROSS.values())
    assert not format_mismatches(expected, got), f"{routing(clab)}:\n" + format_mismatches(expected, got)


@pytest.mark.parametrize("ipv6", [False, True], ids=["v4", "v6"])
def test_the_answer_comes_from_the_remote_pod(clab: Lab, ipv6: bool) -> None:
    for source, target, port, protocol in (("client1", "web2", 80, "tcp"), ("client3", "web2", 53, "udp"),
                                           ("client1", "web3", 80, "tcp")):
        verdict = clab.probe(source, target, port, protocol, ipv6=ipv6)
        assert verdict["verdict"] == "connected" and verdict.get("peer") == target, verdict


@pytest.mark.parametrize("ipv6", [False, True], ids=["v4", "v6"])
def test_nodes_and_the_world_reach_remote_pods(clab: Lab, ipv6: bool) -> None:
    rows = {"n1": [Target("web2", 80), Target("web3", 53, "udp")], "n3": [Target("web2", 80)],
            "world1": [Target("web2", 80), Target("web3", 80), Target("web2", 53, "udp")],
            "client1": [Target("world1", 80)]}  # and a pod reaches the world, from any node
    got = probe_rows(clab, rows, timeout=2.0, ipv6=ipv6)
    assert not format_mismatches(expect_all(got), got), format_mismatches(expect_all(got), got)


def test_a_bulk_transfer_across_nodes_is_not_hurt_by_the_mtu(clab: Lab) -> None:
    with echo_connection(clab, "client1", "web2") as connection:
        assert connection.peer == "web2"
        for size in (1000, 1500, 9000, 200_000):
            assert connection.echo("x" * size), f"{size} bytes did not come back ({routing(clab)})"


def test_ipcache_holds_remote_pods_with_their_identity_and_tunnel_endpoint(clab: Lab) -> None:
    assert ipcache_gaps(clab) == []
    underlay = {name: node["ipv4"] for name, node in clab.state["nodes"].items()}
    for node in NODES:
        cache = ipcache(node)
        for owner in NODES:
            if owner == node:
                continue
            for ip in endpoint_identities(owner):
                row = cache[f"{ip}/{128 if ':' in ip else 32}"]
                tunnel = tunnel_address(row.get("tunnel_endpoint"))
                if routing(clab) == "tunnel":
                    assert tunnel == underlay[owner], (node, ip, row)
                else:
                    assert tunnel in ("", "0.0.0.0"), (node, ip, row)


def tunnel_address(value: object) -> str:
    """An ipcache row's tunnel endpoint as an address: the API shows the map's raw __be32 (an int
    read in host byte order; packed back the same way it is the address's bytes) or a string."""
    if isinstance(value, int):
        return socket.inet_ntoa(struct.pack("=I", value)) if value else ""
    return str(value or "")


def test_same_labels_same_identity_on_every_node(clab: Lab) -> None:
    pods = {ident for node in NODES for ident in endpoint_identities(node).values()}
    seen = [{labels: number for labels, number in identities(node).items() if number in pods} for node in NODES]
    assert seen[0] == seen[1] == seen[2], seen
    # client1 (n1) and client3 (n3) carry the same labels: one identity
    ids = {endpoint_identities(node).get(clab.address_of(pod)) for node, pod in (("n1", "client1"), ("n3", "client3"))}
    assert len(ids) == 1 and None not in ids, ids


def test_every_node_lists_every_node(clab: Lab) -> None:
    for node in NODES:
        assert node_names(node) == list(NODES), node


def test_pod_mtu_leaves_room_for_the_tunnel(clab: Lab) -> None:
    def mtu(netns: str) -> int:
        # `ip`, not /sys/class/net: nsenter --net keeps the root namespace's sysfs
        words = sh(*in_netns(netns, "ip", "-o", "link", "show", "eth0")).stdout.split()
        return int(words[words.index("mtu") + 1])

    node_mtu = mtu(clab.state["nodes"]["n1"]["netns"])
    pod_mtu = mtu(clab.netns_of("client1"))
    assert pod_mtu == (node_mtu - VXLAN_OVERHEAD if routing(clab) == "tunnel" else node_mtu)


def _reaches_both(clab: Lab, source: str, address: str, port: int, protocol: str = "tcp") -> set[str]:
    seen: set[str] = set()
    for _ in range(5):  # bounded: 5 rounds of 12 new connections each
        seen |= peers(probes(clab, source, address, port, protocol, count=12))
        if seen >= BACKENDS:
            break
    return seen


@pytest.mark.parametrize("source", ["client1", "rawclient"], ids=["socket-lb", "per-packet"])
def test_service_with_backends_on_two_other_nodes(clab: Lab, source: str) -> None:
    """The selector picks pods on n2 and n3: n1's agent must know them as backends."""
    assert _reaches_both(clab, source, "10.96.0.80", 80) == BACKENDS
    assert _reaches_both(clab, source, "10.96.0.80", 53, "udp") == BACKENDS


@pytest.mark.parametrize("source", ["client1", "rawclient"], ids=["socket-lb", "per-packet"])
def test_sliced_service_with_backends_on_two_other_nodes(clab: Lab, source: str) -> None:
    assert _reaches_both(clab, source, "10.96.0.81", 80) == BACKENDS
    assert _reaches_both(clab, source, "10.96.0.81", 53, "udp") == BACKENDS


@pytest.mark.parametrize("node", ["n1", "n2"], ids=["no-local-backend", "local-backend"])
@pytest.mark.parametrize("port", [30080, 30081], ids=["selector", "sliced"])
def test_nodeport_from_an_external_host_reaches_backends_on_other_nodes(clab: Lab, node: str, port: int) -> None:
    address = clab.state["nodes"][node]["ipv4"]
    assert _reaches_both(clab, "world1", address, port) == BACKENDS


@pytest.mark.parametrize("address", ["10.96.0.80", "10.96.0.81"], ids=["selector", "sliced"])
def test_a_service_connection_to_a_remote_backend_stays_up(clab: Lab, address: str) -> None:
    with echo_connection(clab, "client1", address) as connection:
        assert connection.peer in BACKENDS
        assert all(connection.echo(f"line {i}") for i in range(20))



@pytest.mark.parametrize("source", ["client1", "rawclient"], ids=["socket-lb", "per-packet"])
def test_internal_traffic_policy_local_keeps_a_pod_on_its_own_nodes_backends(clab: Lab, source: str) -> None:
    assert peers(probes(clab, "client3", "10.96.0.82", 80, count=12)) == {"web3"}  # n3's own only
    got = peers(probes(clab, source, "10.96.0.82", 80, count=4))  # n1 has no web pod: no backend
    assert got <= NO_BACKEND, got
    assert _reaches_both(clab, source, "10.96.0.80", 80) == BACKENDS  # policy Cluster: every node's


def test_external_traffic_policy_local_keeps_a_node_port_on_its_nodes_backends(clab: Lab) -> None:
    nodes = clab.state["nodes"]
    assert peers(probes(clab, "world1", nodes["n2"]["ipv4"], 30082, count=12)) == {"web2"}
    assert peers(probes(clab, "world1", nodes["n3"]["ipv4"], 30082, count=12)) == {"web3"}
    got = peers(probes(clab, "world1", nodes["n1"]["ipv4"], 30082, count=4))  # no backend on n1
    assert got <= NO_BACKEND, got


def test_a_service_without_cluster_ip_has_one_address_on_every_node(clab: Lab) -> None:
    """Allocated on n1 (where it was applied), stored in the object, reserved in etcd; every node's
    agent serves it at that address, and pods on n2 and n3 reach both backends there."""
    stored = {}
    served = {}
    for node in NODES:
        with api(node) as client:
            (obj,) = [o for o in client.get("/v1/resources", {"kind": "Service"})
                      if o["metadata"]["name"] == "web-auto"]
            stored[node] = obj["spec"].get("clusterIP")
            (row,) = [r for r in client.get("/v1/services") if r["name"] == "web-auto"]
            served[node] = row["cluster_ips"]
    address = stored["n1"]
    assert address and ipaddress.ip_address(address) in ipaddress.ip_network("10.96.0.0/12"), stored
    assert set(stored.values()) == {address}, stored
    assert all(ips == [address] for ips in served.values()), served
    assert f"cilia/clusterips/{address}" in etcd_keys(clab, "cilia/clusterips/")
    for source in ("db", "client3", "client1"):  # n2, n3, and n1 where it was applied
        assert _reaches_both(clab, source, address, 80) == BACKENDS, source


def test_concurrent_applies_on_three_nodes_get_distinct_addresses(clab: Lab) -> None:
    """Each node's API applies 8 Services without clusterIP at once (real etcd, three agents):
    no address is given twice, and every node stores and serves the same one for each."""
    names = {node: [f"conc-{node}-{i}" for i in range(8)] for node in NODES}
    errors: list[BaseException] = []

    def run(node: str) -> None:
        try:
            with api(node) as client:
                for name in names[node]:
                    client.apply(ApplyRequest(objects=[{
                        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
                        "spec": {"ports": [{"port": 80, "protocol": "TCP"}]}}]))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(node,)) for node in NODES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    every = sorted(n for group in names.values() for n in group)

    def stored(node: str) -> dict[str, str]:
        with api(node) as client:
            return {o["metadata"]["name"]: o["spec"].get("clusterIP") for o in client.get("/v1/resources",
                    {"kind": "Service"}) if o["metadata"]["name"].startswith("conc-")}

    assert wait_for(lambda: all(sorted(stored(node)) == every for node in NODES), 10)
    views = [stored(node) for node in NODES]
    assert views[0] == views[1] == views[2]
    assert len(set(views[0].values())) == len(every) and None not in views[0].values()
    reserved = set(etcd_keys(clab, "cilia/clusterips/"))
    assert {f"cilia/clusterips/{ip}" for ip in views[0].values()} <= reserved
    with api("n2") as client:  # released on delete
        client.delete(ApplyRequest(objects=[{"apiVersion": "v1", "kind": "Service",
                                             "metadata": {"name": n, "namespace": "default"}} for n in every]))
    left = set(etcd_keys(clab, "cilia/clusterips/"))
    assert not {f"cilia/clusterips/{ip}" for ip in views[0].values()} & left
