"""Heap per remote endpoint (`python -m bench.scale_heap`): the scale benchmark's synthetic cluster
(bench.scale.synthetic_cluster) written into a MemoryKv, one ClusterRuntime mirroring it and
pushing views into a stand-in datapath that diffs like the agent's adapter (against a map held
as packed key/value bytes, as the kernel holds it). tracemalloc's current and peak heap,
after the sync, over N x M, with the stand-in map's own bytes taken out: what the cluster mirrors
cost without an agent, a lab or root.

`--identities` adds the agent's other parts that grow with the cluster: the identities and their
references written too, an EtcdIdentityAllocator mirroring them (its `id/` reflector and, with
the watch-driven collector, its `refs/` reflector), and the views handed through
PolicyAwareClusterSync to a real PolicyEngine (its remote IP -> identity index) before the map."""

from __future__ import annotations

import argparse
import gc
import ipaddress
import sys
import time
import tracemalloc
from typing import Any

from bench.scale import synthetic_cluster


class MapDatapath:
    """sync_cluster as cilia.agent.datapath_adapter does it, against a dict of packed bytes."""

    def __init__(self) -> None:
        self.map: dict[bytes, bytes] = {}
        self.syncs = 0

    def sync_cluster(self, view: Any) -> int:
        from cilia.datapath.cluster import desired_ipcache_packed, packed_ipcache_diff
        diff = packed_ipcache_diff(self.map.items(), desired_ipcache_packed(view))
        for key, value in diff.put.items():
            self.map[key] = value
        for key in diff.delete:
            self.map.pop(key, None)
        self.syncs += 1
        return len(diff.put) + len(diff.delete)

    def map_bytes(self) -> int:
        return sys.getsizeof(self.map) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in self.map.items())


class _NoPolicyDatapath:
    """What the policy engine writes into the datapath: nothing here (no endpoints)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def run(nodes: int = 100, pods_per_node: int = 100, identities: int = 1000, timeout: float = 60.0,
        with_identities: bool = False) -> dict[str, Any]:
    import tempfile
    from pathlib import Path

    import cilia.datapath.cluster  # imported before tracing: modules are not the mirrors
    import cilia.maps.ipcache  # noqa: F401
    from cilia.agent.cluster_policy import PolicyAwareClusterSync
    from cilia.cluster.model import NodeRecord, RoutingMode
    from cilia.cluster.runtime import ClusterRuntime
    from cilia.endpoint.registry import EndpointRegistry
    from cilia.identity.allocator import LocalIdentityAllocator
    from cilia.kvstore.identities import EtcdIdentityAllocator
    from cilia.kvstore.memory import MemoryKv
    from cilia.kvstore.session import NodeSession
    from cilia.policy.engine import PolicyEngine, Settings
    from cilia.resources.kinds import KindRegistry
    from cilia.resources.store import LocalStore

    kv = MemoryKv()
    leases: dict[str, int] = {}
    for record in synthetic_cluster(nodes, pods_per_node, identities):
        if not with_identities and not record.key.startswith(("cilia/nodes/", "cilia/ipcache/")):
            continue
        lease = 0
        if record.node is not None:
            lease = leases.setdefault(record.node, kv.grant_lease(3600))
        kv.put(record.key, record.value, lease)
    endpoints = nodes * pods_per_node
    datapath = MapDatapath()
    tmp = Path(tempfile.mkdtemp(prefix="cilia-scale-heap-"))
    policy = PolicyEngine(resources=LocalStore(tmp / "resources.db", KindRegistry([])),
                          identities=LocalIdentityAllocator(tmp / "identities.json"), datapath=_NoPolicyDatapath(),
                          endpoints=EndpointRegistry(), state_dir=tmp, settings=Settings(), max_entries=0)
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    session = NodeSession(kv, "n1", 60)
    local = NodeRecord("n1", ipaddress.IPv4Address("10.89.0.1"), None, (), RoutingMode.TUNNEL)
    allocator = EtcdIdentityAllocator(kv, "n1", session, tmp / "identities-cache.json") if with_identities else None
    target: Any = PolicyAwareClusterSync(datapath, policy) if with_identities else datapath
    runtime = ClusterRuntime(kv=kv, session=session, local=local, datapath=target, local_endpoints=list,
                             debounce=0.05, retry_interval=0.2)
    started = time.monotonic()
    if allocator is not None:
        allocator.start()
    runtime.start()
    deadline = started + timeout
    while time.monotonic() < deadline:
        view = runtime.controller.view
        if view is not None and len(view.remote_endpoints) == endpoints and not runtime.controller.pending() \
                and (allocator is None or allocator.synced):
            break
        time.sleep(0.05)
    synced = time.monotonic() - started
    # a second sync against the now full map (what every later change costs): its high-water too
    view = runtime.controller.view
    if view is not None:
        target.sync_cluster(view)
    if allocator is not None:  # the references listed too (the collector's first full pass ran)
        refs = getattr(allocator, "_refs_reflector", None)  # absent before the watch-driven collector
        while refs is not None and not refs.synced and time.monotonic() < deadline:
            time.sleep(0.05)
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    held = datapath.map_bytes()
    runtime.stop()
    if allocator is not None:
        allocator.stop()
    policy.stop()
    kv.close()
    return {"nodes": nodes, "pods_per_node": pods_per_node, "endpoints": endpoints,
            "with_identities": with_identities,
            "sync_seconds": round(synced, 2), "syncs": datapath.syncs,
            "heap_bytes_per_endpoint": round((current - base - held) / endpoints),
            "peak_bytes_per_endpoint": round((peak - base - held) / endpoints)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--pods-per-node", type=int, default=100)
    parser.add_argument("--identities", action="store_true",
                        help="with the identity allocator and the policy engine's remote index")
    args = parser.parse_args()
    print(run(args.nodes, args.pods_per_node, with_identities=args.identities))


if __name__ == "__main__":
    main()
