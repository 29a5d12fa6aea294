"""The cluster fields of a lab topology (`kvstore: etcd`, `etcd: {members}`, `routing`): defaults, the
members' names and addresses, and errors that name the file and the field; a hypothesis fuzz of
just these fields on top of a valid cluster topology."""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from mutation import FUZZ, values

from cilia.lab.topology import CLUSTER_POD_RANGES, TopologyError, parse_topology

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "lab.yaml"
CLUSTER: dict[str, Any] = yaml.safe_load((ROOT / "examples/lab-cluster.yaml").read_text())


def test_example_cluster_topology() -> None:
    topology = parse_topology(CLUSTER, SOURCE)
    assert topology.cluster and topology.kvstore == "etcd" and topology.routing == "native"
    assert [n.name for n in topology.nodes] == ["n1", "n2", "n3"]
    assert [(m.name, m.netns, str(m.ipv4)) for m in topology.members] == [
        ("cilia-etcd-1", "cilia-etcd-1", "192.0.2.201"), ("cilia-etcd-2", "cilia-etcd-2", "192.0.2.202"),
        ("cilia-etcd-3", "cilia-etcd-3", "192.0.2.203")]
    # the members' underlay addresses never collide with a node's
    assert not {m.ipv4 for m in topology.members} & {n.underlay_ipv4 for n in topology.nodes}
    web = sorted(p.node for p in topology.pods if p.labels.get("app") == "web")
    assert web == ["n2", "n3"]  # the Service's backends on two nodes
    assert {p.node for p in topology.pods if p.labels.get("app") == "client"} == {"n1", "n3"}


def test_one_node_lab_is_unchanged() -> None:
    topology = parse_topology({}, SOURCE)
    assert not topology.cluster and topology.members == () and topology.etcd_members == 0
    assert [(n.name, str(n.ipv4_pod_cidr), str(n.ipv6_pod_cidr)) for n in topology.nodes] == [
        ("n1", "10.200.1.0/24", "fd00:200:1::/64")]


def test_cluster_defaults() -> None:
    topology = parse_topology({"kvstore": "etcd", "nodes": [{"name": "a"}, {"name": "b"}]}, SOURCE)
    assert topology.etcd_members == 3 and topology.routing == "native"
    # default pod CIDRs inside the ranges the agents are told are natively routed
    for node in topology.nodes:
        assert node.ipv4_pod_cidr.subnet_of(CLUSTER_POD_RANGES[0])
        assert node.ipv6_pod_cidr.subnet_of(CLUSTER_POD_RANGES[1])
    assert str(topology.nodes[1].ipv6_pod_cidr) == "fd00:200:0:2::/64"
    tunnel = parse_topology({"kvstore": "etcd", "etcd": {"members": 1}, "routing": "tunnel"}, SOURCE)
    assert tunnel.etcd_members == 1 and tunnel.routing == "tunnel" and len(tunnel.members) == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kvstore": "consul"}, "lab.yaml: kvstore: 'consul' is not local or etcd"),
        ({"kvstore": ["etcd"]}, "lab.yaml: kvstore:"),
        ({"etcd": {"members": 3}}, "lab.yaml: etcd: only with kvstore: etcd"),
        ({"kvstore": "local", "etcd": {}}, "lab.yaml: etcd: only with kvstore: etcd"),
        ({"kvstore": "etcd", "etcd": 3}, "lab.yaml: etcd: must be a mapping"),
        ({"kvstore": "etcd", "etcd": {"member": 3}}, "lab.yaml: etcd: unknown field 'member'"),
        ({"kvstore": "etcd", "etcd": {"members": 0}}, "lab.yaml: etcd.members: must be an integer 1-7"),
        ({"kvstore": "etcd", "etcd": {"members": 8}}, "lab.yaml: etcd.members"),
        ({"kvstore": "etcd", "etcd": {"members": True}}, "lab.yaml: etcd.members"),
        ({"kvstore": "etcd", "etcd": {"members": "3"}}, "lab.yaml: etcd.members"),
        ({"routing": "native"}, "lab.yaml: routing: only with kvstore: etcd"),
        ({"kvstore": "etcd", "routing": "vxlan"}, "lab.yaml: routing: 'vxlan' is not native or tunnel"),
        ({"kvstore": "etcd", "routing": 1}, "lab.yaml: routing:"),
        ({"kvstore": "etcd", "nodes": [{"name": "n1", "podCIDRv4": "10.1.0.0/24"}]},
         "lab.yaml: nodes[0].podCIDRv4: 10.1.0.0/24 is not inside the cluster's pod range 10.200.0.0/16"),
        ({"kvstore": "etcd", "nodes": [{"name": "n1"}, {"name": "n2", "podCIDRv6": "fd00:200:2::/64"}]},
         "lab.yaml: nodes[1].podCIDRv6: fd00:200:2::/64 is not inside the cluster's pod range fd00:200::/48"),
        ({"nodes": [{"name": "n1"}, {"name": "n1"}]}, "lab.yaml: nodes[1].name: 'n1' is listed twice"),
        ({"kvstore": "etcd", "clusters": 2}, "lab.yaml: unknown field 'clusters'"),
        ({"kvstore": "etcd", "etcd": {"tls": "yes"}}, "lab.yaml: etcd.tls: must be true or false"),
        ({"clusterPool": True}, "lab.yaml: clusterPool: only with kvstore: etcd"),
        ({"kvstore": "etcd", "clusterPool": 5}, "lab.yaml: clusterPool: must be true or a mapping"),
        ({"kvstore": "etcd", "clusterPool": {"v4": "10.200.0.0/16"}}, "lab.yaml: clusterPool: unknown field 'v4'"),
        ({"kvstore": "etcd", "clusterPool": {"ipv4": "10.0.0.0/16"}},
         "lab.yaml: clusterPool.ipv4: 10.0.0.0/16 is not inside the cluster's pod range 10.200.0.0/16"),
        ({"kvstore": "etcd", "clusterPool": {"ipv6": "fd00:300::/48"}}, "lab.yaml: clusterPool.ipv6: fd00:300::/48"),
        ({"kvstore": "etcd", "clusterPool": {"ipv4MaskSize": 8}},
         "lab.yaml: clusterPool.ipv4MaskSize: must be an integer 16-32"),
        ({"kvstore": "etcd", "clusterPool": {"ipv6MaskSize": "64"}}, "lab.yaml: clusterPool.ipv6MaskSize"),
        ({"kvstore": "etcd", "clusterPool": {"ipv4": "10.200.0.0/24", "ipv4MaskSize": 25},
          "nodes": [{"name": "a"}, {"name": "b"}, {"name": "c"}]},
         "lab.yaml: clusterPool.ipv4: 10.200.0.0/24 has fewer than 3 /25 CIDRs"),
        ({"kvstore": "etcd", "clusterPool": True, "nodes": [{"name": "a", "podCIDRv4": "10.200.1.0/24"}]},
         "lab.yaml: nodes[0].podCIDRv4: not with clusterPool"),
    ],
)
def test_cluster_field_errors_name_file_and_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology(data, SOURCE)
    assert message in str(info.value)


CLUSTER_KEYS = ("kvstore", "etcd", "routing")


@st.composite
def cluster_fields(draw: Any) -> dict[str, Any]:
    """The example cluster topology with its kvstore, etcd and routing fields replaced, removed or
    given odd values (and nodes' pod CIDRs sometimes moved out of the cluster's range)."""
    data = copy.deepcopy(CLUSTER)
    for key in CLUSTER_KEYS:
        choice = draw(st.sampled_from(["keep", "drop", "value", "valid"]))
        if choice == "drop":
            data.pop(key, None)
        elif choice == "value":
            data[key] = draw(values())
        elif choice == "valid":
            data[key] = draw({"kvstore": st.sampled_from(["local", "etcd"]),
                              "etcd": st.fixed_dictionaries({"members": st.integers(-2, 9)}),
                              "routing": st.sampled_from(["native", "tunnel"])}[key])
    if draw(st.booleans()):
        data["etcd"] = {"members": draw(values())}
    if draw(st.booleans()):
        index = draw(st.integers(0, len(data["nodes"]) - 1))
        data["nodes"][index]["podCIDRv4"] = draw(st.sampled_from(["10.200.9.0/24", "10.9.0.0/24", "10.200.0.0/15"]))
    return data


@FUZZ
@given(cluster_fields())
def test_cluster_fields_fail_only_with_topology_error(data: dict[str, Any]) -> None:
    try:
        topology = parse_topology(data, SOURCE)
    except TopologyError as exc:
        message = str(exc)
        assert message.startswith(f"{SOURCE}: "), message
        assert any(f in message for f in (*CLUSTER_KEYS, "nodes[")), message
        return
    # accepted: consistent with itself
    assert topology.cluster == (data.get("kvstore") == "etcd")
    assert len(topology.members) == (topology.etcd_members if topology.cluster else 0)
    if topology.cluster:
        assert 1 <= topology.etcd_members <= 7
        assert all(n.ipv4_pod_cidr.subnet_of(ipaddress.IPv4Network("10.200.0.0/16")) for n in topology.nodes)
    else:
        assert data.get("routing") is None and topology.routing == "native"


def test_cluster_pool() -> None:
    topology = parse_topology({"kvstore": "etcd", "clusterPool": True, "nodes": [{"name": "a"}, {"name": "b"}]},
                              SOURCE)
    assert topology.cluster_pool is not None and all(n.ipv4_pod_cidr is None for n in topology.nodes)
    assert topology.cluster_pool.agent_args() == [
        "--cluster-pool-ipv4-cidr", "10.200.0.0/16", "--cluster-pool-ipv4-mask-size", "24",
        "--cluster-pool-ipv6-cidr", "fd00:200::/48", "--cluster-pool-ipv6-mask-size", "64"]
    given = parse_topology({"kvstore": "etcd", "clusterPool": {"ipv4": "10.200.128.0/17", "ipv4MaskSize": 26,
                                                               "ipv6": "fd00:200:0:100::/56", "ipv6MaskSize": 64}},
                           SOURCE).cluster_pool
    assert given is not None and (str(given.ipv4), given.ipv4_mask_size, str(given.ipv6)) == (
        "10.200.128.0/17", 26, "fd00:200:0:100::/56")
    assert parse_topology(CLUSTER, SOURCE).cluster_pool is None


def test_etcd_tls() -> None:
    assert parse_topology({"kvstore": "etcd", "etcd": {"members": 1, "tls": True}}, SOURCE).etcd_tls
    assert not parse_topology(CLUSTER, SOURCE).etcd_tls


def test_cluster_test_topologies() -> None:
    from cilia.testing.cluster import SPREAD, cluster_topology, spread_policy_topology

    for routing in ("native", "tunnel"):
        spread = parse_topology(spread_policy_topology(routing), SOURCE)
        assert spread.cluster and spread.routing == routing and [n.name for n in spread.nodes] == ["n1", "n2", "n3"]
        assert {(p.name, p.node) for p in spread.pods} == set(SPREAD.items())
        assert len(spread.pods) == 9
        example = parse_topology(cluster_topology(routing), SOURCE)
        assert example.routing == routing and len(example.members) == 3
    # the one-node policy topology is untouched by the spread one
    from cilia.testing.reach import policy_topology

    assert parse_topology(policy_topology(), SOURCE).cluster is False
