"""Heap per remote endpoint (`python -m bench.scale_heap`): the scale benchmark's synthetic cluster
(bench.scale.synthetic_cluster) written into a MemoryKv, one ClusterRuntime mirroring it and
pushing views into a stand-in datapath that diffs like the agent's adapter (against a map held
as packed key/value bytes, as the kernel holds it). tracemalloc's current and peak heap,
after the sync, over N x M, with the stand-in map's own bytes taken out: what the cluster mirrors
cost without an agent, a lab or root."""

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


def run(nodes: int = 100, pods_per_node: int = 100, identities: int = 1000, timeout: float = 60.0) -> dict[str, Any]:
    import cilia.datapath.cluster  # imported before tracing: modules are not the mirrors
    import cilia.maps.ipcache  # noqa: F401
    from cilia.cluster.model import NodeRecord, RoutingMode
    from cilia.cluster.runtime import ClusterRuntime
    from cilia.kvstore.memory import MemoryKv
    from cilia.kvstore.session import NodeSession

    kv = MemoryKv()
    leases: dict[str, int] = {}
    for record in synthetic_cluster(nodes, pods_per_node, identities):
        if not record.key.startswith(("cilia/nodes/", "cilia/ipcache/")):
            continue
        lease = 0
        if record.node is not None:
            lease = leases.setdefault(record.node, kv.grant_lease(3600))
        kv.put(record.key, record.value, lease)
    endpoints = nodes * pods_per_node
    datapath = MapDatapath()
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    session = NodeSession(kv, "n1", 60)
    local = NodeRecord("n1", ipaddress.IPv4Address("10.89.0.1"), None, (), RoutingMode.TUNNEL)
    runtime = ClusterRuntime(kv=kv, session=session, local=local, datapath=datapath, local_endpoints=list,
                             debounce=0.05, retry_interval=0.2)
    started = time.monotonic()
    runtime.start()
    deadline = started + timeout
    while time.monotonic() < deadline:
        view = runtime.controller.view
        if view is not None and len(view.remote_endpoints) == endpoints and not runtime.controller.pending():
            break
        time.sleep(0.05)
    synced = time.monotonic() - started
    # a second sync against the now full map (what every later change costs): its high-water too
    view = runtime.controller.view
    if view is not None:
        datapath.sync_cluster(view)
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    held = datapath.map_bytes()
    runtime.stop()
    kv.close()
    return {"nodes": nodes, "pods_per_node": pods_per_node, "endpoints": endpoints,
            "sync_seconds": round(synced, 2), "syncs": datapath.syncs,
            "heap_bytes_per_endpoint": round((current - base - held) / endpoints),
            "peak_bytes_per_endpoint": round((peak - base - held) / endpoints)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--pods-per-node", type=int, default=100)
    args = parser.parse_args()
    print(run(args.nodes, args.pods_per_node))


if __name__ == "__main__":
    main()
