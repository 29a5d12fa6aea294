"""Where a cross-node packet spends its time (`python -m bench.crossnode_profile --mode native`): the
two-node lab of bench.crossnode, each BPF program's runs and average run time over a sockperf
ping-pong, an iperf3 stream and a burst of connections, the netfilter conntrack entries of each
node and the events each agent saw per connection. Nothing is compared with a baseline: this says
what to shorten; bench.crossnode says whether it helped.

Run times come from the kernel's BPF statistics: `kernel.bpf_stats_enabled` (a global sysctl that
only turns on the run_cnt / run_time_ns counters, which cost two clock reads per run) is set for
the run and set back to what it was, also on failure. The figures include that overhead. Run it
under the lab lock, like every lab benchmark."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.crossnode import CLIENT_CPU, MODES, SERVER_CPU, Endpoints, cilia_lab, wait_reachable
from bench.tools import PIN, Server, iperf3, ns, server_command, sockperf_latency, write_results
from cilia.api.client import AgentClient
from cilia.paths import NodePaths
from cilia.testing.wait import wait_for

STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
NODES = ("n1", "n2")
Counters = dict[int, tuple[str, int, int]]  # program id -> (name, run_cnt, run_time_ns)

_CONNECT_LOOP = """
import socket, sys
for _ in range(int(sys.argv[2])):
    c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\\x01\\0\\0\\0\\0\\0\\0\\0')
    c.settimeout(1.0); c.connect((sys.argv[1], 7777)); c.close()
"""


def program_counters() -> Counters:
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    return {int(p["id"]): (str(p.get("name", "?")), int(p.get("run_cnt", 0)), int(p.get("run_time_ns", 0)))
            for p in json.loads(out)}


def per_program(before: Counters, after: Counters) -> dict[str, list[dict[str, int]]]:
    """Programs that ran between the two snapshots, by name (one entry per loaded instance)."""
    out: dict[str, list[dict[str, int]]] = {}
    for pid, (name, runs, ns_total) in sorted(after.items()):
        _, runs0, ns0 = before.get(pid, (name, 0, 0))
        if runs > runs0:
            out.setdefault(name, []).append({"id": pid, "runs": runs - runs0,
                                             "avg_ns": round((ns_total - ns0) / (runs - runs0))})
    return out


def conntrack_entries(netns: str) -> int:
    out = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "cat", "/proc/sys/net/netfilter/nf_conntrack_count"],
                         capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    return int(out) if out.isdigit() else 0


def events_seen(node: str) -> int:
    with AgentClient(NodePaths(node).socket) as client:
        return int(client.get("/v1/flows/status")["seen"])


def measured(run: Callable[[], Any]) -> tuple[Any, dict[str, list[dict[str, int]]]]:
    before = program_counters()
    value = run()
    return value, per_program(before, program_counters())


def profile(mode: str, seconds: int, connections: int) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": mode, "seconds": seconds}
    with cilia_lab(mode) as side:
        PIN[side.client], PIN[side.server] = CLIENT_CPU, SERVER_CPU
        try:
            wait_reachable(side)
            out.update(_profile_side(side, seconds, connections))
        finally:
            PIN.pop(side.client, None)
            PIN.pop(side.server, None)
    return out


def _profile_side(side: Endpoints, seconds: int, connections: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    nodes = {node: f"cilia-{node}" for node in NODES}
    latency, out["sockperf"] = measured(lambda: sockperf_latency(side.client, side.server, side.server_ip, seconds))
    out["sockperf_one_way_us"] = {"avg": latency.avg_us, "p50": latency.p50_us, "p99": latency.p99_us}
    throughput, out["iperf3"] = measured(lambda: iperf3(side.client, side.server, side.server_ip, seconds))
    out["iperf3_gbps"] = round(throughput, 2)
    conntrack_before = {node: conntrack_entries(netns) for node, netns in nodes.items()}
    seen_before = {node: events_seen(node) for node in NODES}
    server = Server(side.server, *server_command("cps", side.server_ip))
    try:
        _, out["connections"] = measured(lambda: subprocess.run(
            ns(side.client, sys.executable, "-c", _CONNECT_LOOP, side.server_ip, str(connections)),
            capture_output=True, timeout=60 + connections, check=True))
    finally:
        server.stop()
    # the agents read their ring buffers in batches: wait until the counts stop moving
    def settled() -> dict[str, int] | None:
        now = {node: events_seen(node) for node in NODES}
        again = {node: events_seen(node) for node in NODES}
        return now if now == again else None

    seen_after = wait_for(settled, 10, 0.3, "the agents' event counts did not settle")
    out["connections_made"] = connections
    out["events_per_connection"] = {node: round((seen_after[node] - seen_before[node]) / connections, 2)
                                    for node in NODES}
    out["netfilter_conntrack_entries"] = {node: {"before": conntrack_before[node], "after": conntrack_entries(netns)}
                                          for node, netns in nodes.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="per-program BPF cost and netfilter state of the cross-node path")
    parser.add_argument("--mode", choices=[m for m in MODES if m != "fabric"], default="native")
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=200)
    args = parser.parse_args()
    previous = STATS_SYSCTL.read_text().strip()
    STATS_SYSCTL.write_text("1")
    try:
        results = profile(args.mode, args.seconds, args.connections)
    finally:
        STATS_SYSCTL.write_text(previous)
    write_results(f"crossnode-profile-{args.mode}", results)


if __name__ == "__main__":
    main()
