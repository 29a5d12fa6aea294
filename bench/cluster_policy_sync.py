"""The cluster view's hand-over to the policy engine (`python -m bench.cluster_policy_sync`): what
cilia.agent.cluster_policy.PolicyAwareClusterSync costs per sync at N x M remote endpoints, against
the former full rebuild (a dict of every remote IP -> identity built from the view and copied
into the engine at each sync, kept here as `FullRebuildSync` to compare).

Views as the cluster controller builds them (`build_view`, the scale benchmark's synthetic
cluster: N tunnel-mode nodes x M pods, K identities), handed over in rounds of three: the full
cluster, one endpoint with another identity, one endpoint gone. A real PolicyEngine (no rules, no
endpoints: the hand-over alone). Both variants in the same run, alternating; the first sync (all
endpoints new) and the median and max of the later ones, wall clock; then, separately with
tracemalloc on, the heap high-water over the syncs per endpoint."""

from __future__ import annotations

import argparse
import gc
import ipaddress
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cilia.agent.cluster_policy import PolicyAwareClusterSync
from cilia.cluster.controller import build_view
from cilia.cluster.model import ClusterView, IpcacheRecord, NodeRecord, RoutingMode
from cilia.endpoint.registry import EndpointRegistry
from cilia.identity.allocator import LocalIdentityAllocator
from cilia.policy.engine import PolicyEngine, Settings
from cilia.resources.kinds import KindRegistry
from cilia.resources.store import LocalStore


class _Nothing:
    """The datapath: the engine writes nothing into it here, the view goes nowhere."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: 0


class FullRebuildSync:
    """The hand-over before it was incremental: the whole IP -> identity dict at every sync."""

    def __init__(self, policy: PolicyEngine) -> None:
        self._policy = policy

    def sync_cluster(self, view: ClusterView) -> object:
        endpoints = {prefix.network_address: endpoint.identity for prefix, endpoint in view.remote_endpoints.items()
                     if prefix.prefixlen == prefix.max_prefixlen}
        pod_cidrs = [cidr for node in view.nodes if node.name != view.local_node for cidr in node.pod_cidrs]
        return self._policy.cluster_endpoints_changed(endpoints, pod_cidrs)


def views(nodes: int, pods: int, identities: int) -> list[ClusterView]:
    records = [NodeRecord(f"s{i}", ipaddress.IPv4Address(f"10.90.{i // 256}.{i % 256}"), None,
                          (ipaddress.ip_network(f"10.{210 + i // 256}.{i % 256}.0/24"),), RoutingMode.TUNNEL)
               for i in range(nodes)]
    local = NodeRecord("n1", ipaddress.IPv4Address("10.89.0.1"), None, (), RoutingMode.TUNNEL)
    ipcache = [IpcacheRecord(ipaddress.IPv4Address(f"10.{210 + i // 256}.{i % 256}.{j + 1}"),
                             10_000 + (i * pods + j) % identities, f"s{i}", records[i].ipv4)
               for i in range(nodes) for j in range(pods)]
    moved = list(ipcache)
    moved[5] = IpcacheRecord(ipcache[5].ip, 10_000 + identities, ipcache[5].node, ipcache[5].node_ipv4)
    every = [*records, local]
    return [build_view("n1", RoutingMode.TUNNEL, every, ipcache),
            build_view("n1", RoutingMode.TUNNEL, every, moved),
            build_view("n1", RoutingMode.TUNNEL, every, moved[:-1])]


def measure(make: Callable[[], Any], policy: PolicyEngine, rounds: list[ClusterView], repeat: int,
            trace: bool) -> dict[str, float]:
    policy.cluster_endpoints_changed({})
    sync = make()
    gc.collect()
    if trace:
        tracemalloc.start()
    times = []
    for _ in range(repeat):
        for view in rounds:
            started = time.perf_counter()
            sync.sync_cluster(view)
            times.append((time.perf_counter() - started) * 1000)
    peak = 0
    if trace:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    if trace:  # tracemalloc slows everything down: only the heap counts from this pass
        return {"heap_high_water_bytes_per_endpoint": round(peak / len(rounds[0].remote_endpoints))}
    return {"first_sync_ms": round(times[0], 2), "later_syncs_median_ms": round(statistics.median(times[1:]), 2),
            "later_syncs_max_ms": round(max(times[1:]), 2)}


def run(nodes: int = 100, pods: int = 100, identities: int = 1000, repeat: int = 5) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="cilia-policy-sync-"))
    policy = PolicyEngine(resources=LocalStore(tmp / "resources.db", KindRegistry([])),
                          identities=LocalIdentityAllocator(tmp / "identities.json"), datapath=_Nothing(),
                          endpoints=EndpointRegistry(), state_dir=tmp, settings=Settings(), max_entries=0)
    rounds = views(nodes, pods, identities)
    variants: dict[str, Callable[[], Any]] = {
        "full_rebuild": lambda: FullRebuildSync(policy),
        "incremental": lambda: PolicyAwareClusterSync(_Nothing(), policy),
    }
    out: dict[str, Any] = {"endpoints": len(rounds[0].remote_endpoints), "syncs_per_variant": 3 * repeat}
    try:
        for trace in (False, True):
            for name, make in variants.items():
                out.setdefault(name, {}).update(measure(make, policy, rounds, repeat, trace))
    finally:
        policy.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--pods-per-node", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(run(args.nodes, args.pods_per_node, repeat=args.repeat))


if __name__ == "__main__":
    main()
