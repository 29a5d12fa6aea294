"""DNS proxy benchmark (`python -m bench.dns`): on a lab with the lab's dnsmasq (`dns: true`),

1. queries/s, one client sending A queries one after the other (UDP, a fresh allowed name each
   time, so every answer is a new cache entry): from a pod whose DNS rule sends its queries
   through cilia-proxy's DNS proxy, and from a pod without DNS rules straight to the same
   dnsmasq, in alternating rounds; the ratio is the median of the per-round ratios;
   Every query is the first lookup of its name: the client's per-query latencies give the
   first-lookup latency (p50/p99) through the proxy and direct;
2. the delay from the resolver's answer to its addresses' ipcache entries (the step the pod's
   answer waits for), p50/p99, as the proxy records it (its dns-stats.json);
3. the first lookup of a name that needs an FQDN set identity nobody could allocate ahead:
   `s<i>.cdn.example.test` (all `*.cdn.example.test` names share one address in the lab zone)
   under selectors `matchName: s<i>.cdn.example.test`, so the address's selector set grows by
   one new, never co-matching selector per lookup and the proxy must ask the agent each time.
   Reports those lookups' latencies and answer -> ipcache delays (the set-identity wait), and the
   proxy's count of set requests during phases 1-2 (0: every set was allocated with the policy)."""

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
        {"toFQDNs": [{"matchPattern": "*.cdn.example.test"}, {"matchName": "q1-warm.cdn.example.test"}],
         "toPorts": [{"ports": [{"port": "80"}]}]}]},
}
SET_LOOKUPS = 10
SET_POLICY = {
    "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "sets", "namespace": "default"},
    "spec": {"endpointSelector": {"matchLabels": {"app": "proxied"}}, "egress": [
        {"toFQDNs": [{"matchName": f"s{i}.cdn.example.test"} for i in range(SET_LOOKUPS)],
         "toPorts": [{"ports": [{"port": "81"}]}]}]},
}
CLIENT = textwrap.dedent("""
    import json, socket, sys, time
    import dns.message
    tag, seconds = sys.argv[1], float(sys.argv[2])
    names = sys.argv[3].split(",") if len(sys.argv) > 3 else None
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3.0)
    s.connect(("RESOLVER", 53))
    done = lost = i = 0
    latencies = []
    end = time.monotonic() + seconds
    start = time.monotonic()
    while time.monotonic() < end and (names is None or i < len(names)):
        i += 1
        q = dns.message.make_query(names[i - 1] if names else f"q{i}-{tag}.cdn.example.test", "A")
        wire = q.to_wire()
        sent = time.monotonic()
        s.send(wire)
        try:
            while True:
                a = s.recv(4096)
                if a[:2] == wire[:2]:
                    break
            latencies.append(time.monotonic() - sent)
            done += 1
        except OSError:
            lost += 1
    print(json.dumps({"answers": done, "lost": lost, "seconds": time.monotonic() - start,
                      "latencies_s": latencies}))
""").replace("RESOLVER", RESOLVER)


def _round(lab: Lab, pod: str, tag: str, seconds: float, names: list[str] | None = None) -> dict[str, Any]:
    out = subprocess.run(in_netns(lab.netns_of(pod), PYTHON, "-c", CLIENT, tag, str(seconds),
                                  *([",".join(names)] if names else [])),
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
        stats = _stats_after(time.time())
        with AgentClient(NodePaths("n1").socket) as client:
            client.apply(ApplyRequest(objects=[SET_POLICY]), wait=30)
        _round(lab, "proxied", "set-warm", 5.0, ["q2-set-warm.cdn.example.test"])  # the cdn address known
        sets = _round(lab, "proxied", "sets", 60.0, [f"s{i}.cdn.example.test" for i in range(SET_LOOKUPS)])
        after = _stats_after(time.time())
    set_delays = after["ipcache_delays_s"][-SET_LOOKUPS:]
    results["set_identity_lookup_ms"] = summary([x * 1000 for x in sets["latencies_s"]], 3)
    results["set_identity_answer_to_ipcache_ms"] = summary([x * 1000 for x in set_delays], 3)
    results["set_requests_in_phases_1_2"] = stats["set_requests"]
    results["set_requests_in_phase_3"] = after["set_requests"] - stats["set_requests"]
    for pod in ("direct", "proxied"):
        lat = [x * 1000 for r in results[pod] for x in r.pop("latencies_s")]
        results[f"{pod}_first_lookup_ms"] = summary(lat, 3)
    pairs = [(d["qps"], p["qps"]) for d, p in zip(results["direct"], results["proxied"], strict=True)]
    results["qps_ratio_proxied_vs_direct"] = median_ratio(pairs)
    results["direct_qps_median"] = sorted(d["qps"] for d in results["direct"])[rounds // 2]
    results["proxied_qps_median"] = sorted(p["qps"] for p in results["proxied"])[rounds // 2]
    delays_ms = [d * 1000 for d in stats.pop("ipcache_delays_s")]
    results["answer_to_ipcache_ms"] = summary(delays_ms, 3)
    results["proxy_stats"] = stats
    return results


def _stats_after(since: float, timeout: float = 5.0) -> dict[str, Any]:
    """The proxy's dns-stats.json once it was written after `since` (it writes every second)."""
    path = NodePaths("n1").run_dir / "proxy" / "dns-stats.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if path.stat().st_mtime > since + 0.05:
                stats: dict[str, Any] = json.loads(path.read_text())
                return stats
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{path} not rewritten within {timeout} s")


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
