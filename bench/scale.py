"""Scale (`python -m bench.scale`): a synthetic cluster of N nodes x M pods written into etcd in
cilia's key format, and one real agent syncing it: the time until its ipcache map holds every
remote endpoint, and its memory per remote endpoint.

The generator (`synthetic_cluster`, pure) writes what N live agents would (docs/cluster.md):
- `cilia/nodes/s<i>` -> NodeRecord JSON (underlay 10.90.<i/256>.<i%256>, pod CIDR
  10.<210 + i/256>.<i%256>.0/24, tunnel mode) under node i's lease;
- `cilia/ipcache/<pod ip>` -> IpcacheRecord JSON for its M pods (10.<210 + i/256>.<i%256>.<j+1>)
  under node i's lease;
- `cilia/identities/id/<N>` -> {"labels": [...]} and `cilia/identities/labels/<key>` -> {"id": N}
  for K identities (numbers from 10,000, clear of what the measured agent allocates itself; pod
  (i, j) has identity (i x M + j) mod K), and `cilia/identities/refs/<N>/<node>` -> {} for each
  identity a node's pods use, under that node's lease.
Written in transactions of 100 operations (etcd's limit is 128) through cilia's EtcdClient.

The agent: a one-node cluster lab (`kvstore: etcd`, one etcd member, `routing: tunnel`: no routes
to the synthetic nodes, whose underlay addresses exist nowhere) with no pods.
1. *live*: with the agent running and settled, its RSS (VmRSS of the agent's process, median of 5
   reads over 1 s) is the baseline; the cluster is written; the clock runs from the first write
   (and separately from the last) until the agent's pinned ipcache map holds all N x M endpoint
   entries with the right identity (read straight from the map, every 0.2 s); the RSS once synced,
   minus the baseline, over N x M, is the memory per remote endpoint.
2. *cold start*: the agent is killed (kill -9), the synthetic entries deleted from its map (the map
   is pinned: it outlives the agent), and a new agent started: the time from its start until the map
   holds them all again (the initial list, not the watch), and that agent's RSS against the first
   agent's idle baseline.
Targets: sync under 5 s; under 2 KiB of agent memory per remote endpoint.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.tools import write_results

SYNC_TARGET_S, MEMORY_TARGET_BYTES = 5.0, 2048
IDENTITY_BASE = 10_000
TXN_OPS = 100
LEASE_TTL = 3600  # the synthetic nodes' leases outlive the run (the etcd is removed after it)
NAMESPACE = "scale"


@dataclass(frozen=True)
class Record:
    """One key to write, with the synthetic node whose lease it lives under (None: no lease)."""

    key: str
    value: bytes
    node: str | None = None


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def node_name(i: int) -> str:
    return f"s{i:03d}"


def node_ipv4(i: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(f"10.90.{i // 256}.{i % 256}")


def pod_cidr(i: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.{210 + i // 256}.{i % 256}.0/24")


def pod_ip(i: int, j: int) -> ipaddress.IPv4Address:
    if not 0 <= j < 254:
        raise ValueError(f"pod {j}: at most 254 pods per node (a /24)")
    return pod_cidr(i).network_address + j + 1


def identity_labels(k: int) -> list[str]:
    """Identity k's labels, sorted as cilia's LabelSet sorts them (its key joins them with ';')."""
    return sorted([f"k8s:app=scale-{k}", f"k8s:io.kubernetes.pod.namespace={NAMESPACE}"])


def identity_of(i: int, j: int, pods_per_node: int, identities: int) -> int:
    return IDENTITY_BASE + (i * pods_per_node + j) % identities


def synthetic_cluster(nodes: int, pods_per_node: int, identities: int) -> Iterator[Record]:
    """Every key of the synthetic cluster (nodes numbered from 1: s001 ...)."""
    if not 1 <= nodes <= 255 * 256 or identities < 1 or IDENTITY_BASE + identities > 65536:
        raise ValueError("nodes must be 1..65280 and identities fit below 65536")
    for k in range(identities):
        labels = identity_labels(k)
        yield Record(f"cilia/identities/id/{IDENTITY_BASE + k}", _json({"labels": labels}))
        yield Record(f"cilia/identities/labels/{';'.join(labels)}", _json({"id": IDENTITY_BASE + k}))
    for i in range(1, nodes + 1):
        name = node_name(i)
        yield Record(f"cilia/nodes/{name}", _json({
            "name": name, "ipv4": str(node_ipv4(i)), "ipv6": None, "pod_cidrs": [str(pod_cidr(i))],
            "routing_mode": "tunnel", "health": "ok", "health_reason": "", "updated": time.time()}), name)
        used = sorted({identity_of(i, j, pods_per_node, identities) for j in range(pods_per_node)})
        for number in used:
            yield Record(f"cilia/identities/refs/{number}/{name}", b"{}", name)
        for j in range(pods_per_node):
            ip = pod_ip(i, j)
            yield Record(f"cilia/ipcache/{ip}", _json({
                "ip": str(ip), "identity": identity_of(i, j, pods_per_node, identities), "node": name,
                "node_ipv4": str(node_ipv4(i)), "node_ipv6": None, "namespace": NAMESPACE,
                "pod": f"{name}-p{j}"}), name)


def expected_endpoints(nodes: int, pods_per_node: int, identities: int) -> dict[ipaddress.IPv4Network, int]:
    """What the agent's ipcache map must end up holding for the synthetic endpoints: /32 -> identity."""
    return {ipaddress.IPv4Network(pod_ip(i, j)): identity_of(i, j, pods_per_node, identities)
            for i in range(1, nodes + 1) for j in range(pods_per_node)}


def batches(records: Iterator[Record], size: int = TXN_OPS) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def missing(current: dict[Any, int], expected: dict[Any, int]) -> int:
    """How many expected entries the map does not hold (or holds with another identity)."""
    return sum(1 for prefix, identity in expected.items() if current.get(prefix) != identity)


# ----- the measurement (root, a lab) --------------------------------------------------------------
def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def settled_rss(pid: int, reads: int = 5, interval: float = 0.25) -> int:
    values = []
    for _ in range(reads):
        values.append(rss_kib(pid))
        time.sleep(interval)
    return int(statistics.median(values))


def write_cluster(kv: Any, records: Iterator[Record]) -> int:
    """Write the records in transactions, one lease per synthetic node; returns the keys written."""
    from cilia.kvstore.api import Put

    leases: dict[str, int] = {}
    written = 0
    for batch in batches(records):
        ops = []
        for record in batch:
            lease = 0
            if record.node is not None:
                if record.node not in leases:
                    leases[record.node] = kv.grant_lease(LEASE_TTL)
                lease = leases[record.node]
            ops.append(Put(record.key, record.value, lease))
        if not kv.txn([], ops):
            raise RuntimeError("a transaction without compares failed")
        written += len(ops)
    return written


def wait_synced(read: Callable[[], dict[Any, int]], expected: dict[Any, int], timeout: float,
                interval: float = 0.2) -> tuple[float | None, int]:
    """Seconds (monotonic clock) at which `read()` first held every expected entry, or None after
    `timeout`; and the entries still missing at the last read."""
    deadline = time.monotonic() + timeout
    left = len(expected)
    while time.monotonic() < deadline:
        left = missing(read(), expected)
        if left == 0:
            return time.monotonic(), 0
        time.sleep(interval)
    return None, left


def run(nodes: int = 100, pods_per_node: int = 100, identities: int = 1000, timeout: float = 120.0) -> dict[str, Any]:
    from cilia.bpf import BpfMap
    from cilia.kvstore.etcd import EtcdClient
    from cilia.lab.process import kill_pid
    from cilia.maps import ipcache
    from cilia.paths import NodePaths
    from cilia.testing.labs import running_lab

    endpoints = nodes * pods_per_node
    out: dict[str, Any] = {"nodes": nodes, "pods_per_node": pods_per_node, "endpoints": endpoints,
                           "identities": identities, "errors": []}
    expected = expected_endpoints(nodes, pods_per_node, identities)
    topology = {"kvstore": "etcd", "etcd": {"members": 1}, "routing": "tunnel", "nodes": [{"name": "n1"}]}
    with running_lab(topology) as lab:
        pins = NodePaths("n1").bpffs_dir

        def read() -> dict[Any, int]:
            with BpfMap.from_pin(pins / ipcache.NAME) as raw:
                return {prefix: value.identity for prefix, value in ipcache.IpcacheMap(raw).entries().items()}

        pid = int(lab.state["nodes"]["n1"]["agent_pid"])
        time.sleep(2.0)  # the agent's start-up work (first syncs, caches) done before the baseline
        idle = settled_rss(pid)
        out["rss_idle_mib"] = round(idle / 1024, 1)
        kv = EtcdClient(lab.etcd.unix_endpoints, timeout=30)
        try:
            start = time.monotonic()
            out["keys_written"] = write_cluster(kv, synthetic_cluster(nodes, pods_per_node, identities))
            written = time.monotonic()
            out["write_seconds"] = round(written - start, 2)
            done, left = wait_synced(read, expected, timeout)
            if done is None:
                out["errors"].append(f"live: {left} of {endpoints} endpoints still missing after {timeout:.0f} s")
            else:
                out["live_sync_seconds_from_first_write"] = round(done - start, 2)
                out["live_sync_seconds_from_last_write"] = round(done - written, 2)
                time.sleep(1.0)
                loaded = settled_rss(pid)
                out["rss_live_synced_mib"] = round(loaded / 1024, 1)
                out["live_bytes_per_endpoint"] = round((loaded - idle) * 1024 / endpoints, 0)
            # cold start: a new agent, the map emptied of the synthetic entries, etcd full
            kill_pid(pid)
            with BpfMap.from_pin(pins / ipcache.NAME) as raw:
                table = ipcache.IpcacheMap(raw)
                for prefix in expected:
                    table.delete(prefix)
            start = time.monotonic()
            new_pid = lab.restart_agent("n1")
            healthy = time.monotonic()
            out["cold_agent_ready_seconds"] = round(healthy - start, 2)
            done, left = wait_synced(read, expected, timeout)
            if done is None:
                out["errors"].append(f"cold: {left} of {endpoints} endpoints still missing after {timeout:.0f} s")
            else:
                out["cold_sync_seconds_from_agent_start"] = round(done - start, 2)
                out["cold_sync_seconds_from_agent_ready"] = round(done - healthy, 2)
                time.sleep(1.0)
                loaded = settled_rss(new_pid)
                out["rss_cold_synced_mib"] = round(loaded / 1024, 1)
                out["cold_bytes_per_endpoint"] = round((loaded - idle) * 1024 / endpoints, 0)
        finally:
            kv.close()
    out["targets"] = verdicts(out)
    if not out["errors"]:
        del out["errors"]
    return out


def verdicts(out: dict[str, Any]) -> dict[str, str]:
    def check(key: str, limit: float) -> str:
        value = out.get(key)
        return "-" if value is None else ("met" if value < limit else "missed")

    return {"live sync < 5 s (from the last write)": check("live_sync_seconds_from_last_write", SYNC_TARGET_S),
            "cold sync < 5 s (from the agent ready)": check("cold_sync_seconds_from_agent_ready", SYNC_TARGET_S),
            "< 2 KiB per endpoint (live)": check("live_bytes_per_endpoint", MEMORY_TARGET_BYTES),
            "< 2 KiB per endpoint (cold)": check("cold_bytes_per_endpoint", MEMORY_TARGET_BYTES)}


def main() -> None:
    parser = argparse.ArgumentParser(description="one agent syncing a synthetic cluster from etcd")
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--pods-per-node", type=int, default=100)
    parser.add_argument("--identities", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    write_results("scale", run(args.nodes, args.pods_per_node, args.identities, args.timeout))


if __name__ == "__main__":
    main()
