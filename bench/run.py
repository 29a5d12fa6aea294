"""`make bench`: cilia against a bare veth pair and a routed node with 1,000 / 10,000 iptables rules.

Each scenario runs in the same invocation, so the ratios compare like with like on this machine.
cilia and the bare veth pair (the ratio the targets are about) are up at the same time and
measured in alternating rounds (each tool on both sides, the side that goes first alternating):
on a 2-core machine the noise between minutes is larger than the difference measured, and
alternating puts both sides under the same drift. The ratio reported is the median of the
per-round ratios.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from statistics import median
from typing import Any

from bench.tools import Figures, cps, iperf3, measure, sockperf, write_results
from bench.topologies import bare_veth, routed_iptables
from cilia.lab.lab import Lab, cleanup_leftovers
from cilia.lab.topology import PodSpec, PortSpec, parse_topology


def cilia_pods() -> tuple[Lab, str, str, str]:
    cleanup_leftovers()
    lab = Lab.up(parse_topology({"pods": [{"name": "bench-client", "labels": {"app": "bench-client"}},
                                          {"name": "bench-server", "labels": {"app": "bench-server"}}]}))
    return lab, lab.netns_of("bench-client"), lab.netns_of("bench-server"), lab.address_of("bench-server")


def interleaved(seconds: int, rounds: int) -> list[tuple[Figures, Figures]]:
    """Bare veth and cilia up together, measured in rounds of one run each: every tool runs on both
    sides before the next tool starts, and which side goes first alternates from round to round."""
    lab, client, server, ip = cilia_pods()
    try:
        with bare_veth() as (a, b, veth_ip):
            sides = {"veth": (a, b, veth_ip), "cilia": (client, server, ip)}
            out = []
            for index in range(rounds):
                order = ["veth", "cilia"] if index % 2 == 0 else ["cilia", "veth"]
                throughput = {side: iperf3(*sides[side], seconds) for side in order}
                latency = {side: sockperf(*sides[side], seconds) for side in order}
                rate = {side: cps(*sides[side], seconds) for side in order}
                veth, cilia = (Figures(throughput_gbps=round(throughput[side], 2),
                                       latency_avg_us=round(latency[side][0], 2),
                                       latency_p99_us=round(latency[side][1], 2),
                                       connections_per_s=round(rate[side], 0)) for side in ("veth", "cilia"))
                print(f"round {index + 1}/{rounds} ({' first, '.join(order)} second): veth {veth}; cilia {cilia}",
                      flush=True)
                out.append((veth, cilia))
            return out
    finally:
        lab.down()


def _median_figures(items: list[Figures]) -> Figures:
    return Figures(throughput_gbps=round(median(f.throughput_gbps for f in items), 2),
                   latency_avg_us=round(median(f.latency_avg_us for f in items), 2),
                   latency_p99_us=round(median(f.latency_p99_us for f in items), 2),
                   connections_per_s=round(median(f.connections_per_s for f in items), 0))


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
    parser.add_argument("--only", default="veth,iptables1k,iptables10k,cilia,memory",
                        help="comma-separated; also `policy` (bench.policy: 0/1k/10k rules, cilia and iptables), "
                             "`crossnode` (bench.crossnode: two nodes, native and tunnel, against plain Linux), "
                             "`convergence` (bench.convergence, 3 nodes), `scale` (bench.scale, 100 x 100 in etcd), "
                             "`flows` (bench.observability: the flow pipeline) and `obs` (observability overhead)")
    args = parser.parse_args()
    seconds, repeats, pods = (2, 1, 20) if args.quick else (args.seconds, args.repeats, 100)
    only = set(args.only.split(","))
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "seconds": seconds, "repeats": repeats}
    figures: dict[str, Figures] = {}
    if "veth" in only and "cilia" in only:
        rounds = interleaved(seconds, repeats)
        figures["bare veth"] = _median_figures([v for v, _ in rounds])
        figures["cilia pod-to-pod"] = _median_figures([c for _, c in rounds])
        results["rounds"] = [{"bare veth": asdict(v), "cilia pod-to-pod": asdict(c)} for v, c in rounds]
        results["per_round_ratio_medians"] = {
            "throughput cilia/veth": round(median(c.throughput_gbps / v.throughput_gbps for v, c in rounds), 3),
            "latency cilia/veth": round(median(c.latency_avg_us / v.latency_avg_us for v, c in rounds), 3),
            "cps cilia/veth": round(median(c.connections_per_s / v.connections_per_s for v, c in rounds), 3),
        }
    elif "veth" in only:
        with bare_veth() as (a, b, ip):
            figures["bare veth"] = measure(a, b, ip, seconds, repeats)
    for rules, key in ((1000, "iptables1k"), (10000, "iptables10k")):
        if key in only:
            with routed_iptables(rules) as (a, b, ip):
                figures[f"routed + {rules} iptables rules"] = measure(a, b, ip, seconds, repeats)
    if "cilia" in only and "veth" not in only:
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
    if "policy" in only:
        from bench.policy import run as policy_run  # imported here: only this option needs it

        results["policy"] = policy_run(seconds, repeats, {"cilia", "iptables", "bpf"})
    if "crossnode" in only:
        from bench.crossnode import run as crossnode_run

        results["crossnode"] = crossnode_run(["native", "tunnel"], min(seconds, 3), repeats, with_cilia=True)
        results.setdefault("errors", []).extend(results["crossnode"].get("errors", []))
    if "convergence" in only:
        from bench.convergence import run as convergence_run

        results["convergence"] = convergence_run(5 if args.quick else 20)
        results.setdefault("errors", []).extend(results["convergence"].get("errors", []))
    if "scale" in only:
        from bench.scale import run as scale_run

        results["scale"] = scale_run(10 if args.quick else 100, 100)
        results.setdefault("errors", []).extend(results["scale"].get("errors", []))
    if "flows" in only or "obs" in only:
        from bench.observability import run as observability_run

        parts = ({"stages", "lab"} if "flows" in only else set()) | ({"overhead"} if "obs" in only else set())
        results["observability"] = observability_run(seconds, repeats, [2000, 5000, 20000, 50000], parts)
    if not results.get("errors"):
        results.pop("errors", None)
    write_results("results", results)


if __name__ == "__main__":
    main()
