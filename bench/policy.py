"""`python -m bench.policy`: does per-packet cost grow with policy size?

cilia: two lab pods, the server selected by a CiliumNetworkPolicy that allows the client (all
ports) plus N more rules, each a /32 CIDR peer (so N CIDR identities, N ipcache entries and N
selector-map entries for the server). Baseline in the same run: a routed node whose FORWARD chain
holds N iptables rules ahead of the ACCEPT, as an iptables NetworkPolicy implementation would.
Both at N = 0, 1,000 and 10,000; ratios against N = 0 of the same datapath.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.run import cilia_pods
from bench.tools import Figures, measure
from bench.topologies import routed_iptables
from cilia.api.client import AgentClient
from cilia.api.models import ApplyRequest
from cilia.paths import NodePaths

SIZES = (0, 1000, 10000)


def scale_policy(rules: int) -> dict[str, Any]:
    cidrs = [{"cidr": f"172.{16 + i // 65536 % 16}.{i // 256 % 256}.{i % 256}/32"} for i in range(rules)]
    ingress: list[dict[str, Any]] = [{"fromEndpoints": [{"matchLabels": {"app": "bench-client"}}]}]
    if cidrs:
        ingress.append({"fromCIDRSet": cidrs, "toPorts": [{"ports": [{"port": "1000", "protocol": "TCP"}]}]})
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "bench-scale", "namespace": "default"},
            "spec": {"endpointSelector": {"matchLabels": {"app": "bench-server"}}, "ingress": ingress}}


def run(seconds: int, repeats: int, only: set[str]) -> dict[str, Any]:
    figures: dict[str, dict[int, Figures]] = {"cilia": {}, "iptables": {}}
    apply_seconds: dict[int, float] = {}
    if "cilia" in only:
        lab, client, server, ip = cilia_pods()
        try:
            for size in SIZES:
                with AgentClient(NodePaths("n1").socket, timeout=600) as api:
                    start = time.monotonic()
                    api.apply(ApplyRequest(objects=[scale_policy(size)]))
                    apply_seconds[size] = round(time.monotonic() - start, 2)
                figures["cilia"][size] = measure(client, server, ip, seconds, repeats)
                print(f"cilia {size}: {figures['cilia'][size]} (policy applied in {apply_seconds[size]} s)", flush=True)
        finally:
            lab.down()
    if "iptables" in only:
        for size in SIZES:
            with routed_iptables(size) as (a, b, ip):
                figures["iptables"][size] = measure(a, b, ip, seconds, repeats)
                print(f"iptables {size}: {figures['iptables'][size]}", flush=True)
    ratios: dict[str, float] = {}
    for name, table in figures.items():
        base = table.get(0)
        for size, f in table.items():
            if base is not None and size:
                ratios[f"{name} throughput {size}/0"] = round(f.throughput_gbps / base.throughput_gbps, 3)
                ratios[f"{name} latency {size}/0"] = round(f.latency_avg_us / base.latency_avg_us, 3)
    for size in SIZES:
        c, i = figures["cilia"].get(size), figures["iptables"].get(size)
        if c and i:
            ratios[f"throughput cilia/iptables at {size}"] = round(c.throughput_gbps / i.throughput_gbps, 3)
            ratios[f"latency cilia/iptables at {size}"] = round(c.latency_avg_us / i.latency_avg_us, 3)
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "seconds": seconds, "repeats": repeats,
            "figures": {name: {size: asdict(f) for size, f in table.items()} for name, table in figures.items()},
            "cilia_policy_apply_seconds": apply_seconds, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description="policy size vs per-packet cost")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 s runs, one repeat")
    parser.add_argument("--only", default="cilia,iptables")
    args = parser.parse_args()
    seconds, repeats = (2, 1) if args.quick else (args.seconds, args.repeats)
    results = run(seconds, repeats, set(args.only.split(",")))
    out = Path("build/bench")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"policy-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results["ratios"], indent=2))
    print(f"written to {path}", flush=True)
    os.sync()


if __name__ == "__main__":
    main()
