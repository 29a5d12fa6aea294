"""`make bench`: cilia against a bare veth pair and a routed node with 1,000 / 10,000 iptables rules.

Each scenario runs in the same invocation, so the ratios compare like with like on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.tools import Figures, measure
from bench.topologies import bare_veth, routed_iptables
from cilia.lab.lab import Lab, cleanup_leftovers
from cilia.lab.topology import PodSpec, PortSpec, parse_topology


def cilia_pods() -> tuple[Lab, str, str, str]:
    cleanup_leftovers()
    lab = Lab.up(parse_topology({"pods": [{"name": "bench-client", "labels": {"app": "bench-client"}},
                                          {"name": "bench-server", "labels": {"app": "bench-server"}}]}))
    return lab, lab.netns_of("bench-client"), lab.netns_of("bench-server"), lab.address_of("bench-server")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def agent_memory(pods: int) -> dict[str, Any]:
    cleanup_leftovers()
    lab = Lab.up(parse_topology({}))
    try:
        pid = int(lab.state["nodes"]["n1"]["agent_pid"])
        base = rss_kib(pid)
        start = time.monotonic()
        for i in range(pods):
            lab.add_pod(PodSpec(f"mem{i}", "default", "n1", {"app": f"m{i % 10}"}, None, (PortSpec(80),)[:0]))
        elapsed = time.monotonic() - start
        loaded = rss_kib(pid)
        return {"pods": pods, "rss_idle_mib": round(base / 1024, 1), "rss_loaded_mib": round(loaded / 1024, 1),
                "per_pod_kib": round((loaded - base) / max(pods, 1), 1), "seconds_to_add": round(elapsed, 1)}
    finally:
        lab.down()


def main() -> None:
    parser = argparse.ArgumentParser(description="cilia benchmarks")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 s runs, one repeat, 20 pods for memory")
    parser.add_argument("--only", default="veth,iptables1k,iptables10k,cilia,memory")
    args = parser.parse_args()
    seconds, repeats, pods = (2, 1, 20) if args.quick else (args.seconds, args.repeats, 100)
    only = set(args.only.split(","))
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "seconds": seconds, "repeats": repeats}
    figures: dict[str, Figures] = {}
    if "veth" in only:
        with bare_veth() as (a, b, ip):
            figures["bare veth"] = measure(a, b, ip, seconds, repeats)
    for rules, key in ((1000, "iptables1k"), (10000, "iptables10k")):
        if key in only:
            with routed_iptables(rules) as (a, b, ip):
                figures[f"routed + {rules} iptables rules"] = measure(a, b, ip, seconds, repeats)
    if "cilia" in only:
        lab, a, b, ip = cilia_pods()
        try:
            figures["cilia pod-to-pod"] = measure(a, b, ip, seconds, repeats)
        finally:
            lab.down()
    results["datapath"] = {name: asdict(f) for name, f in figures.items()}
    if "bare veth" in figures and "cilia pod-to-pod" in figures:
        veth, cilia = figures["bare veth"], figures["cilia pod-to-pod"]
        results["ratios"] = {
            "throughput cilia/veth (target >= 0.9)": round(cilia.throughput_gbps / veth.throughput_gbps, 3),
            "latency cilia/veth (target <= 1.1)": round(cilia.latency_avg_us / veth.latency_avg_us, 3),
            "cps cilia/veth": round(cilia.connections_per_s / veth.connections_per_s, 3),
        }
        for name, f in figures.items():
            if name.startswith("routed"):
                results["ratios"][f"throughput cilia/({name})"] = round(cilia.throughput_gbps / f.throughput_gbps, 3)
                results["ratios"][f"latency cilia/({name})"] = round(cilia.latency_avg_us / f.latency_avg_us, 3)
    if "memory" in only:
        results["agent_memory"] = agent_memory(pods)
    out = Path("build/bench")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"written to {path}", flush=True)
    os.sync()


if __name__ == "__main__":
    main()
