"""`python -m bench.regeneration [--endpoints 1000] [--applies 20] [--all-applies 5]`: apply-to-enforce latency.

One lab node with N endpoints (created through the agent's endpoint API, each in its own
cilia-rg-* network namespace: veth, identity, BPF programs, policy state, everything but a
process in the pod). Ten of them carry `sel: ten`; all carry `app: bench` (and one of 50 shard
labels, so there are ~51 identities). Two CiliumNetworkPolicies are applied in turns:

- `ten` selects the ten (`sel: ten`) and allows TCP port P on ingress;
- `all` selects every endpoint (`app: bench`) and allows TCP port P.

Each apply uses a port not used before, so "enforced" is exact: for every selected endpoint the
policy state map's current generation has an allow entry for P in the policy map (read straight
from the pinned maps, not the agent's word). The latency is from just before the apply call to
the moment the last selected endpoint's map holds it. In queue mode the agent's wait API
(`GET /v1/policy/wait`) is timed too.

Both modes in one run on the same endpoints: first the agent as it runs by default
(`--policy-regeneration queue`: only the endpoints a change can affect, by worker threads), then
the same agent restarted with `--policy-regeneration sync` (the behaviour before the queue: every
change regenerates every endpoint in the API thread). Endpoints are created in queue mode (in sync
mode each ADD regenerates every endpoint, so creating N costs N^2).

Printed and written to build/bench/regeneration-<time>.json; exit status 1 if a part failed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import subprocess
import sys
import time
from typing import Any

from bench.tools import refuse_if_busy, write_results
from cilia.api.client import AgentClient, AgentError, AgentUnavailable
from cilia.api.models import ApplyRequest, EndpointCreateRequest
from cilia.bpf import BpfMap
from cilia.lab.lab import Lab, LabError, cleanup_leftovers
from cilia.lab.topology import parse_topology
from cilia.maps import policy as pm
from cilia.paths import NodePaths
from cilia.policy.mapstate import ALLOW, DIRECTION_BITS, PortKey
from cilia.policy.rules import Direction

NODE = "n1"
SELECTED = 10
SHARDS = 50
TCP = 6
FIRST_PORT = 20000
ENFORCE_TIMEOUT = 300.0  # seconds one apply may take to reach every selected endpoint's maps
TARGET_P99_MS = 100.0  # the ten-endpoint change, whatever the number of other endpoints


class BenchError(Exception):
    """A scenario could not be measured as intended."""


def netns_name(index: int) -> str:
    return f"cilia-rg-{index}"


def topology() -> dict[str, Any]:
    return {"nodes": [{"name": NODE, "podCIDRv4": "10.210.0.0/20", "podCIDRv6": "fd00:210::/64"}], "pods": []}


def labels_of(index: int) -> dict[str, str]:
    return {"app": "bench", "sel": "ten" if index < SELECTED else "rest", "shard": str(index % SHARDS)}


def api(timeout: float = 600.0) -> AgentClient:
    return AgentClient(NodePaths(NODE).socket, timeout=timeout)


def create_endpoints(count: int) -> dict[int, dict[str, str]]:
    """endpoint id -> labels; one namespace and one endpoint API call (an ADD) each."""
    created: dict[int, dict[str, str]] = {}
    start = time.monotonic()
    with api() as client:
        for index in range(count):
            subprocess.run(["ip", "netns", "add", netns_name(index)], check=True, capture_output=True, timeout=30)
            endpoint = client.create_endpoint(EndpointCreateRequest(
                container_id=f"bench-rg-{index}", netns=f"/run/netns/{netns_name(index)}",
                pod_name=f"rg-{index}", labels=labels_of(index)))
            created[endpoint.id] = labels_of(index)
            if (index + 1) % 100 == 0:
                print(f"  {index + 1}/{count} endpoints in {time.monotonic() - start:.0f} s", flush=True)
    return created


def policy(name: str, selector: dict[str, str], port: int) -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"endpointSelector": {"matchLabels": selector},
                     "ingress": [{"toPorts": [{"ports": [{"port": str(port), "protocol": "TCP"}]}]}]}}


class LiveMaps:
    """The node's pinned policy maps, read directly: does an endpoint's live policy allow TCP `port`?"""

    def __init__(self) -> None:
        pins = NodePaths(NODE).bpffs_dir
        self.state = BpfMap.from_pin(pins / pm.STATE_NAME)
        self.policy = BpfMap.from_pin(pins / pm.POLICY_NAME)

    def allows(self, endpoint_id: int, port: int) -> bool:
        raw = self.state.lookup(struct.pack("<I", endpoint_id))
        if raw is None:
            return False
        flags = struct.unpack("<II", raw)[0]
        if flags & pm.FAILED:
            return False
        dir_gen = DIRECTION_BITS[Direction.INGRESS] << 1 | (flags & pm.GENERATION)
        value = self.policy.lookup(pm.lpm_key(endpoint_id, 0, dir_gen, PortKey(TCP, port, 16)))
        return value is not None and struct.unpack("<IB3x", value)[1] == ALLOW

    def close(self) -> None:
        self.state.close()
        self.policy.close()


def measure(maps: LiveMaps, name: str, selector: dict[str, str], port: int, targets: list[int],
            wait_api: bool) -> dict[str, float]:
    """One apply: milliseconds until the API answered, the wait API said so (queue mode), and every
    target's live map allows `port`."""
    remaining = set(targets)
    with api() as client:
        start = time.perf_counter()
        result = client.apply(ApplyRequest(objects=[policy(name, selector, port)]))
        answered = time.perf_counter()
        sample = {"api_ms": (answered - start) * 1000}
        if wait_api:
            waited = client.wait_policy(result.revision, ENFORCE_TIMEOUT)
            if not waited.ok:
                raise BenchError(f"policy {name} port {port}: wait API: {waited}")
            sample["wait_api_ms"] = (time.perf_counter() - start) * 1000
    deadline = start + ENFORCE_TIMEOUT
    while remaining:
        remaining = {e for e in remaining if not maps.allows(e, port)}
        if not remaining:
            break
        if time.perf_counter() > deadline:
            raise BenchError(f"policy {name} port {port}: {len(remaining)} of {len(targets)} endpoints' maps "
                             f"do not allow it after {ENFORCE_TIMEOUT:.0f} s (e.g. {sorted(remaining)[:5]})")
        time.sleep(0.0005)
    sample["enforced_ms"] = (time.perf_counter() - start) * 1000
    return {k: round(v, 2) for k, v in sample.items()}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return round(statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1], 2)


def summary(samples: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"applies": len(samples)}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out[key] = {"p50": percentile(values, 50), "p99": percentile(values, 99), "max": round(max(values), 2)}
    return out


def run_mode(mode: str, maps: LiveMaps, endpoints: dict[int, dict[str, str]], applies: int, all_applies: int,
             next_port: list[int]) -> dict[str, Any]:
    ten = sorted(e for e, labels in endpoints.items() if labels["sel"] == "ten")
    everyone = sorted(endpoints)
    cases: dict[str, list[dict[str, float]]] = {"ten": [], "all": []}
    # Interleaved: the ten-endpoint policy between applies of the all-endpoint one, as in a cluster.
    plan = ["ten"] * applies
    for k in range(all_applies):
        plan.insert(min(len(plan), (k + 1) * max(1, applies // max(1, all_applies))), "all")
    for case in plan:
        port = next_port[0]
        next_port[0] += 1
        if case == "ten":
            sample = measure(maps, "ten", {"sel": "ten"}, port, ten, wait_api=mode == "queue")
        else:
            sample = measure(maps, "all", {"app": "bench"}, port, everyone, wait_api=mode == "queue")
        cases[case].append(sample)
        print(f"  {mode} {case:>3} port {port}: {sample}", flush=True)
    return {name: summary(samples) | {"samples": samples} for name, samples in cases.items() if samples}


def restart_agent(lab: Lab, mode: str, timeout: float = 900.0) -> float:
    """Restart the node's agent with `--policy-regeneration mode`; seconds until it serves (it
    re-attaches every endpoint's programs first)."""
    start = time.monotonic()
    try:
        lab.restart_agent(NODE, kill=False, agent_args=["--policy-regeneration", mode])
    except LabError as exc:  # the lab waits 30 s; restoring N endpoints takes longer
        if "exited" in str(exc):
            raise
    deadline = start + timeout
    while time.monotonic() < deadline:
        try:
            with api(timeout=5) as client:
                client.healthz()
                return round(time.monotonic() - start, 1)
        except (AgentUnavailable, AgentError):
            time.sleep(0.5)
    raise BenchError(f"the agent did not serve within {timeout:.0f} s of its restart in {mode} mode")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--endpoints", type=int, default=1000, help="endpoints on the node")
    parser.add_argument("--applies", type=int, default=20, help="applies of the ten-endpoint policy per mode")
    parser.add_argument("--all-applies", type=int, default=5, help="applies of the all-endpoint policy per mode")
    parser.add_argument("--workers", type=int, default=2, help="--regeneration-workers of the queue-mode agent")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.regeneration needs root (lab namespaces, BPF)")
    if args.endpoints < SELECTED:
        sys.exit(f"--endpoints must be at least {SELECTED}")
    refuse_if_busy()
    results: dict[str, Any] = {"endpoints": args.endpoints, "selected": SELECTED, "applies": args.applies,
                               "all_applies": args.all_applies, "workers": args.workers,
                               "cpus": os.cpu_count(), "errors": []}
    cleanup_leftovers()
    lab = Lab.up(parse_topology(topology()), agent_args=["--regeneration-workers", str(args.workers)])
    maps: LiveMaps | None = None
    count = 0
    try:
        start = time.monotonic()
        endpoints = create_endpoints(args.endpoints)
        count = len(endpoints)
        results["create_seconds"] = round(time.monotonic() - start, 1)
        maps = LiveMaps()
        next_port = [FIRST_PORT]
        results["queue"] = run_mode("queue", maps, endpoints, args.applies, args.all_applies, next_port)
        results["restart_seconds"] = restart_agent(lab, "sync")
        results["sync"] = run_mode("sync", maps, endpoints, args.applies, args.all_applies, next_port)
        p99 = results["queue"]["ten"]["enforced_ms"]["p99"]
        results["target"] = {"ten_enforced_p99_ms": p99, "limit_ms": TARGET_P99_MS, "met": p99 < TARGET_P99_MS}
    except (BenchError, AgentError, AgentUnavailable, LabError, subprocess.SubprocessError, OSError) as exc:
        results["errors"].append(f"{type(exc).__name__}: {exc}")
    finally:
        if maps is not None:
            maps.close()
        for index in range(max(count, args.endpoints)):
            subprocess.run(["ip", "netns", "del", netns_name(index)], capture_output=True, check=False, timeout=30)
        lab.down()
    for mode in ("queue", "sync"):
        for case, figures in (results.get(mode) or {}).items():
            print(f"{mode:>5} {case:>3}: enforced p50 {figures['enforced_ms']['p50']} ms, "
                  f"p99 {figures['enforced_ms']['p99']} ms", flush=True)
    write_results("regeneration", results)


if __name__ == "__main__":
    main()
