"""Policy across nodes: the policy topology (x, y, z x a, b, c, world1) spread over three nodes on a
real 3-member etcd (every pod a on n1, b on n2, c on n3), both routing modes. The held-out-style
matrix (tests/e2e/test_policy_e2e.py's cases, the same expectations) must come out the same as on one
node, with each policy applied once, through a different node each time; a policy applied on n1 is
enforced on n3; the `host` and `remote-node` entities tell the local node from the others."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cilia.lab.lab import Lab
from cilia.testing.cluster import (
    NODES,
    ROUTING_MODES,
    SPREAD,
    apply_text,
    clear_policies,
    policies,
    running_cluster_lab,
    spread_policy_topology,
)
from cilia.testing.reach import Target, probe_rows
from tests.e2e.test_policy_e2e import CASES, CNP, Expect, check


@pytest.fixture(scope="module", params=ROUTING_MODES)
def plab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    with running_cluster_lab(spread_policy_topology(request.param)) as lab:
        yield lab


def test_the_matrix_mixes_same_node_and_cross_node_pairs(plab: Lab) -> None:
    nodes = {name: pod["node"] for name, pod in plab.state["pods"].items()}
    assert nodes["x/a"] == nodes["y/a"] == "n1" and nodes["x/b"] == "n2" and nodes["z/c"] == "n3"
    assert set(nodes.values()) == set(NODES) and set(SPREAD.values()) == set(NODES)


@pytest.mark.parametrize(("title", "policies_text", "expect"), CASES, ids=[c[0][:2] for c in CASES])
def test_policy_matrix_across_nodes(plab: Lab, title: str, policies_text: str, expect: Expect) -> None:
    via = NODES[int(title[:2]) % len(NODES)]  # written once, through one node; every node enforces it
    clear_policies(plab, via)
    if policies_text:
        apply_text(plab, policies_text, via)
    check(plab, expect)


def test_policy_applied_on_n1_is_enforced_on_n3(plab: Lab) -> None:
    clear_policies(plab)
    apply_text(plab, CNP("c-from-b", "x", """  endpointSelector: {matchLabels: {pod: c}}
  ingress: [{fromEndpoints: [{matchLabels: {pod: b}}]}]"""), via="n1")
    assert [p[2] for p in policies("n3")] == ["c-from-b"]
    got = probe_rows(plab, {"x/a": [Target("x/c", 80)], "x/b": [Target("x/c", 80), Target("x/c", 80, "udp")],
                            "y/b": [Target("x/c", 80)], "x/c": [Target("x/a", 80)]}, timeout=1.0)
    assert got == {("x/a", "x/c", 80, "tcp"): False,  # n1 -> n3: denied on n3
                   ("x/b", "x/c", 80, "tcp"): True, ("x/b", "x/c", 80, "udp"): True,  # n2 -> n3, x/b allowed
                   ("y/b", "x/c", 80, "tcp"): False,  # pod b of another namespace (same identity labels but ns)
                   ("x/c", "x/a", 80, "tcp"): True}  # not selected: x/a still open
    got6 = probe_rows(plab, {"x/a": [Target("x/c", 80)], "x/b": [Target("x/c", 80)]}, timeout=1.0, ipv6=True)
    assert got6 == {("x/a", "x/c", 80, "tcp"): False, ("x/b", "x/c", 80, "tcp"): True}
    clear_policies(plab, "n3")


def node_probes(lab: Lab, target: str, port: int = 80) -> dict[str, str]:
    """Each node's verdict connecting to `target` (a pod on n1)."""
    return {node: lab.probe(node, target, port, timeout=1.0)["verdict"] for node in NODES}


def test_ingress_from_remote_node_entity(plab: Lab) -> None:
    clear_policies(plab)
    apply_text(plab, CNP("a-from-remote-nodes", "x", """  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEntities: [remote-node]}]"""), via="n2")
    verdicts = node_probes(plab, "x/a")
    # n2 and n3 are remote nodes to x/a (on n1); n1 itself is the host, allowed by allow-localhost
    assert verdicts == {"n1": "connected", "n2": "connected", "n3": "connected"}, verdicts
    pods = probe_rows(plab, {"x/b": [Target("x/a", 80)], "y/a": [Target("x/a", 80)],
                             "world1": [Target("x/a", 80)]}, timeout=1.0)
    assert not any(pods.values()), pods  # no pod, same node or not, and not the world
    clear_policies(plab)


def test_ingress_from_host_entity_is_the_local_node_only(plab: Lab) -> None:
    clear_policies(plab)
    apply_text(plab, CNP("a-from-host", "x", """  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEntities: [host]}]"""), via="n3")
    verdicts = node_probes(plab, "x/a")
    assert verdicts["n1"] == "connected", verdicts
    assert verdicts["n2"] != "connected" and verdicts["n3"] != "connected", verdicts
    clear_policies(plab)


def test_egress_to_host_and_to_remote_node(plab: Lab) -> None:
    """A closed port answers with a reset: `refused` is reached, `timed-out` is dropped."""
    n1, n2 = plab.state["nodes"]["n1"]["ipv4"], plab.state["nodes"]["n2"]["ipv4"]
    for entity, reached, dropped in (("host", n1, n2), ("remote-node", n2, n1)):
        clear_policies(plab)
        apply_text(plab, CNP("a-egress", "x", f"""  endpointSelector: {{matchLabels: {{pod: a}}}}
  egress: [{{toEntities: [{entity}]}}]"""))
        assert plab.probe("x/a", reached, 9, timeout=1.5)["verdict"] == "refused", entity
        assert plab.probe("x/a", dropped, 9, timeout=1.5)["verdict"] == "timed-out", entity
        assert plab.probe("x/a", "y/b", 80, timeout=1.0)["verdict"] == "timed-out", entity  # pods are neither
    clear_policies(plab)
