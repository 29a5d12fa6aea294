"""GetNamespaces' cluster field as upstream fills it: nodeTypes.GetClusterName(), the configured
cluster name but empty for Cilium's default cluster `default` (cilia's only one), and the sort
upstream's namespace manager applies (cluster, then namespace)."""

from __future__ import annotations

from cilia.hubble.namespaces import CLUSTER, NamespaceTracker, reported_cluster


def test_the_default_cluster_is_reported_empty() -> None:
    assert reported_cluster() == reported_cluster("default") == reported_cluster("") == "" == CLUSTER
    assert reported_cluster("mesh-east") == "mesh-east"


def test_namespaces_carry_the_reported_cluster_sorted_as_upstream() -> None:
    now = 10**18
    tracker = NamespaceTracker(clock=lambda: now, cluster=reported_cluster("mesh-east"))
    for namespace in ("zeta", "alpha", "", "alpha"):
        tracker.add(namespace, now)
    assert [(n.cluster, n.namespace) for n in tracker.namespaces()] == [("mesh-east", "alpha"), ("mesh-east", "zeta")]
    assert [(n.cluster, n.namespace) for n in NamespaceTracker(clock=lambda: now).namespaces()] == []
