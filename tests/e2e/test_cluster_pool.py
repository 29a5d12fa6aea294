"""A 3-node lab on a real 3-member etcd whose nodes claim their pod CIDRs from the cluster pool
(`clusterPool:` in the topology: the agents get --cluster-pool-ipv4-cidr / -ipv6-cidr and mask
sizes, no static CIDR): distinct, non-overlapping CIDRs of the pool's mask size, IPv4 and IPv6,
claimed in etcd; pods get addresses in their node's CIDRs and talk across nodes (and the world
reaches them through the fabric's routes to the claimed CIDRs); an agent killed and restarted keeps
its CIDRs and its pods their addresses."""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterator

import pytest

from cilia.lab.lab import Lab
from cilia.testing.cluster import NODES, api, cluster_topology, etcd_keys, running_cluster_lab, wait_converged
from cilia.testing.reach import Target, expect_all, format_mismatches, probe_rows

POOL_V4 = ipaddress.IPv4Network("10.200.0.0/16")
POOL_V6 = ipaddress.IPv6Network("fd00:200::/48")
CROSS = {
    "client1": [Target("web2", 80), Target("web3", 53, "udp"), Target("db", 5432)],
    "client3": [Target("web2", 80), Target("db", 5432)],
    "db": [Target("web3", 80)],
    "world1": [Target("web2", 80), Target("web3", 80)],
}


@pytest.fixture(scope="module")
def plab() -> Iterator[Lab]:
    topology = cluster_topology("native", nodes=[{"name": name} for name in NODES],
                                clusterPool={"ipv4": str(POOL_V4), "ipv4MaskSize": 24,
                                             "ipv6": str(POOL_V6), "ipv6MaskSize": 64})
    with running_cluster_lab(topology) as lab:
        yield lab


def claimed(node: str) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network]:
    """The pod CIDRs the node's agent runs with (its status)."""
    with api(node) as client:
        status = client.status()
    assert status.ipv4_pod_cidr and status.ipv6_pod_cidr, status
    return ipaddress.IPv4Network(status.ipv4_pod_cidr), ipaddress.IPv6Network(status.ipv6_pod_cidr)


def pods_of(lab: Lab, node: str) -> list[str]:
    return sorted(p.split("/", 1)[1] for p, pod in lab.state["pods"].items() if pod["node"] == node)


def test_nodes_claim_distinct_cidrs_of_the_pool(plab: Lab) -> None:
    cidrs = {node: claimed(node) for node in NODES}
    for v4, v6 in cidrs.values():
        assert v4.subnet_of(POOL_V4) and v4.prefixlen == 24, cidrs
        assert v6.subnet_of(POOL_V6) and v6.prefixlen == 64, cidrs
    for (a, (a4, a6)), (b, (b4, b6)) in itertools.combinations(cidrs.items(), 2):
        assert not a4.overlaps(b4) and not a6.overlaps(b6), (a, b, cidrs)
    # claimed in etcd (no lease), one key per node and family; the lab routes to what was claimed
    keys = etcd_keys(plab, "cilia/podcidrs/")
    assert len([k for k in keys if "/v4/" in k]) == 3 and len([k for k in keys if "/v6/" in k]) == 3, keys
    for node, (v4, v6) in cidrs.items():
        assert (plab.state["nodes"][node]["ipv4_pod_cidr"], plab.state["nodes"][node]["ipv6_pod_cidr"]) == (
            str(v4), str(v6))
        # every node's record advertises the CIDRs its agent claimed
        with api("n1") as client:
            listed = {n.name: n.pod_cidrs for n in client.list_nodes()}
        assert listed[node] == [str(v4), str(v6)], listed


def test_pods_get_addresses_in_their_nodes_cidrs(plab: Lab) -> None:
    for node in NODES:
        v4, v6 = claimed(node)
        for pod in pods_of(plab, node):
            assert ipaddress.ip_address(plab.address_of(pod)) in v4, (node, pod)
            assert ipaddress.ip_address(plab.address_of(pod, ipv6=True)) in v6, (node, pod)


@pytest.mark.parametrize("ipv6", [False, True], ids=["v4", "v6"])
def test_pods_talk_across_nodes(plab: Lab, ipv6: bool) -> None:
    got = probe_rows(plab, CROSS, timeout=2.0, ipv6=ipv6)
    assert not format_mismatches(expect_all(got), got), format_mismatches(expect_all(got), got)


def test_a_restarted_agent_keeps_its_cidrs(plab: Lab) -> None:
    before = {node: claimed(node) for node in NODES}
    addresses = {pod: (plab.address_of(pod), plab.address_of(pod, ipv6=True)) for pod in pods_of(plab, "n2")}
    plab.restart_agent("n2")  # kill -9, then the same flags: the pool, no static CIDR
    wait_converged(plab, 60)
    assert {node: claimed(node) for node in NODES} == before
    with api("n2") as client:
        restored = {e.pod_name: (e.ipv4, e.ipv6) for e in client.list_endpoints()}
    assert restored == addresses
    got = probe_rows(plab, {"client1": [Target("web2", 80), Target("db", 5432)]}, timeout=2.0)
    assert not format_mismatches(expect_all(got), got), format_mismatches(expect_all(got), got)
