"""Running labs for tests and benchmarks: a lab that is always torn down, also when the body fails,
and that starts from a clean machine (the leftovers of a crashed earlier run swept first)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cilia.api.client import AgentClient
from cilia.api.models import ApplyRequest
from cilia.lab.lab import Lab, cleanup_leftovers
from cilia.lab.topology import Topology, load_topology, parse_topology
from cilia.paths import NodePaths

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
BASIC = EXAMPLES / "lab-basic.yaml"  # one node, client/web in default, db in team-a, world1
CLUSTER = EXAMPLES / "lab-cluster.yaml"  # three nodes on a 3-member etcd, clients n1/n3, web on n2 and n3


def topology_of(source: Topology | Mapping[str, Any] | Path) -> Topology:
    """A topology from a file, from the dict a topology file holds, or as it is."""
    if isinstance(source, Topology):
        return source
    if isinstance(source, Path):
        return load_topology(source)
    return parse_topology(dict(source))


@contextmanager
def running_lab(source: Topology | Mapping[str, Any] | Path,
                agent_args: list[str] | None = None) -> Iterator[Lab]:
    """`with running_lab(BASIC) as lab:` a lab up for the body's duration."""
    cleanup_leftovers()
    lab = Lab.up(topology_of(source), agent_args=agent_args)
    try:
        yield lab
    finally:
        lab.down()


# On lab-basic: web takes port 80 from team-a/db only, so client's probe to web:80 is default-denied.
WEB_FROM_DB = {
    "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "web-from-db", "namespace": "default"},
    "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
             "ingress": [{"fromEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "team-a",
                                                             "app": "db"}}],
                          "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]},
}


@contextmanager
def client_denied_to_web(lab: Lab, node: str = "n1") -> Iterator[Lab]:
    """lab-basic with WEB_FROM_DB enforced (waited for), checked by a denied and an allowed probe;
    the policy is deleted again on exit."""
    with AgentClient(NodePaths(node).socket) as client:
        client.apply(ApplyRequest(objects=[WEB_FROM_DB]), wait=30)  # regeneration runs in the background
    try:
        assert lab.probe("client", "web", 80, timeout=1.0)["verdict"] != "connected"
        assert lab.probe("db", "web", 80)["verdict"] == "connected"
        yield lab
    finally:
        with AgentClient(NodePaths(node).socket) as client:
            client.delete(ApplyRequest(objects=[{"kind": WEB_FROM_DB["kind"], "metadata": WEB_FROM_DB["metadata"]}]))
