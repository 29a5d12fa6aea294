"""DNS proxy benchmark (`python -m bench.dns`): on a lab with the lab's dnsmasq (`dns: true`),

1. queries/s, one client sending A queries one after the other (UDP, a fresh allowed name each
   time, so every answer is a new cache entry): from a pod whose DNS rule sends its queries
   through cilia-proxy's DNS proxy, and from a pod without DNS rules straight to the same
   dnsmasq, in alternating rounds; the ratio is the median of the per-round ratios;
2. the delay from the resolver's answer to its addresses' ipcache entries (the step the pod's
   answer waits for), p50/p99, as the proxy records it (its dns-stats.json)."""

from __future__ import annotations

import argparse
import json
import subprocess
import textwrap
import time
from typing import Any

from bench.stats import median_ratio, summary
from bench.tools import write_results
from cilia.api.client import AgentClient
from cilia.api.models import ApplyRequest
from cilia.lab.lab import PYTHON, Lab
from cilia.lab.process import in_netns
from cilia.paths import NodePaths
from cilia.testing.labs import running_lab

RESOLVER = "198.51.100.53"
TOPOLOGY = {
    "nodes": [{"name": "n1", "podCIDRv4": "10.200.1.0/24", "podCIDRv6": "fd00:200:1::/64"}],
    "namespaces": [],
    "pods": [{"name": "proxied", "namespace": "default", "labels": {"app": "proxied"}},
             {"name": "direct", "namespace": "default", "labels": {"app": "direct"}}],
    "externals": [{"name": f"web{i}", "ports": [{"port": 80}]} for i in range(3)],
    "dns": True,
}
POLICY = {
    "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "dns", "namespace": "default"},
    "spec": {"endpointSelector": {"matchLabels": {"app": "proxied"}}, "egress": [
        {"toCIDR": [f"{RESOLVER}/32"],
         "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}],
                      "rules": {"dns": [{"matchPattern": "**.example.test"}]}}]},
        {"toFQDNs": [{"matchPattern": "*.cdn.example.test"}], "toPorts": [{"ports": [{"port": "80"}]}]}]},
}
CLIENT = textwrap.dedent("""
    import json, socket, sys, time
    import dns.message
    tag, seconds = sys.argv[1], float(sys.argv[2])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    s.connect(("RESOLVER", 53))
    done = lost = i = 0
    end = time.monotonic() + seconds
    start = time.monotonic()
    while time.monotonic() < end:
        i += 1
        q = dns.message.make_query(f"q{i}-{tag}.cdn.example.test", "A")
        wire = q.to_wire()
        s.send(wire)
        try:
            while True:
                a = s.recv(4096)
                if a[:2] == wire[:2]:
                    break
            done += 1
        except OSError:
            lost += 1
    print(json.dumps({"answers": done, "lost": lost, "seconds": time.monotonic() - start}))
""").replace("RESOLVER", RESOLVER)


def _round(lab: Lab, pod: str, tag: str, seconds: float) -> dict[str, Any]:
    out = subprocess.run(in_netns(lab.netns_of(pod), PYTHON, "-c", CLIENT, tag, str(seconds)),
                         capture_output=True, text=True, timeout=seconds + 60, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["qps"] = round(result["answers"] / result["seconds"], 1)
    return result


def run(seconds: float, rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {"seconds": seconds, "rounds": rounds, "direct": [], "proxied": []}
    with running_lab(TOPOLOGY) as lab:
        with AgentClient(NodePaths("n1").socket) as client:
            client.apply(ApplyRequest(objects=[POLICY]), wait=30)
        _round(lab, "proxied", "warm", 1.0)
        for i in range(rounds):
            order = ("direct", "proxied") if i % 2 == 0 else ("proxied", "direct")
            for pod in order:
                results[pod].append(_round(lab, pod, f"r{i}", seconds))
        time.sleep(1.5)  # the proxy writes its stats every second
        stats = json.loads((NodePaths("n1").run_dir / "proxy" / "dns-stats.json").read_text())
    pairs = [(d["qps"], p["qps"]) for d, p in zip(results["direct"], results["proxied"], strict=True)]
    results["qps_ratio_proxied_vs_direct"] = median_ratio(pairs)
    results["direct_qps_median"] = sorted(d["qps"] for d in results["direct"])[rounds // 2]
    results["proxied_qps_median"] = sorted(p["qps"] for p in results["proxied"])[rounds // 2]
    delays_ms = [d * 1000 for d in stats.pop("ipcache_delays_s")]
    results["answer_to_ipcache_ms"] = summary(delays_ms, 3)
    results["proxy_stats"] = stats
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="cilia DNS proxy benchmark")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    results = run(args.seconds, args.rounds)
    results["date"] = time.strftime("%Y-%m-%d %H:%M")
    write_results("dns", results)


if __name__ == "__main__":
    main()
