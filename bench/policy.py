"""`python -m bench.policy [--quick] [--only cilia,iptables,bpf] [--sizes 0,1000,10000]`: does the cost of a
packet grow with the size of the policy that lets it through?

Every size is up at the same time and measured in alternating rounds (as bench.run and bench.services
do), so the machine's drift between minutes falls on every size alike and a ratio is the median of
per-round ratios. (This bench used to measure N = 0, 1,000 and 10,000 one after another, re-applying
one policy: on this 2-core machine the drift between the sizes decided the ratio.)

- cilia: one lab node with a client pod {app: bench-client} and one server pod per size N,
  bench-server-<N> {app: bench-server, bench-policy-size: N}. For N > 0, CiliumNetworkPolicy
  default/bench-scale-<N> selects that server only, allows the client on exactly the TCP ports the
  tools use (bench/tools.py PORTS: iperf3 5201, sockperf --tcp 11111, the CPS meter 7777) and adds
  a second ingress rule with N distinct /32 `fromCIDRSet` peers on TCP 1000 (CIDR identities,
  ipcache entries and N selector-map entries for that server). The N = 0 server is selected by no
  policy. Before measuring, a probe to a port nothing listens on checks each policy is in force
  (refused without a policy, dropped with one) and the agent's endpoint list must show each server
  selected by its own policy only.
- iptables baseline: one bench/topologies.py `routed_iptables(N)` node per size (a routed node whose
  FORWARD chain holds N non-matching rules, on the same /32 sources, ahead of the ACCEPT).
- Each round runs iperf3 (throughput), then sockperf (TCP ping-pong latency), then the CPS meter
  (connections/s) on every scenario, the order of scenarios rotating by one each round.
- bpf (bench/policy_cost.py): the per-packet cost of the real bpf_lxc programs by BPF_PROG_RUN with
  each server's policy map as the agent computes it: an established connection's packet and a new
  connection's SYN, per size, in rotating rounds, baseline N = 0 (no policy).

Reports per-size medians and spread (min-max over the rounds), ratios to N = 0 (each datapath
against itself) and cilia / iptables at each N as medians of per-round ratios with their min-max,
the policy apply time per size and the target (cilia at the largest N within 5% of N = 0 for
throughput and latency). Printed and written to build/bench/policy-<time>.json; exit status 1 if
a part failed (what was measured before is kept).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from statistics import median
from typing import Any

from bench import policy_cost
from bench.kubeproxy import KubeProxyError, start_servers, wait_reachable
from bench.tools import PORTS, Figures, cps, iperf3, ns, refuse_if_busy, sockperf, write_results
from bench.topologies import routed_iptables
from cilia.api.client import AgentClient
from cilia.api.models import ApplyRequest
from cilia.lab.lab import Lab, cleanup_leftovers
from cilia.lab.topology import parse_topology
from cilia.paths import NodePaths

SIZES = (0, 1000, 10000)
BPF_SIZES = (0, 1, 1000, 10000)  # N = 1 separates having a policy at all (1/0) from its size (10,000/1)
POLICY_PREFIX = "bench-scale"
SIZE_LABEL = "bench-policy-size"
CLIENT_LABELS = {"app": "bench-client"}
PROBE_PORT = 5999  # nothing listens here and no policy allows it
PROBED_PORTS = (PORTS["sockperf"], PORTS["cps"])  # iperf3's server logs an error on a bare connect
APPLY_TIMEOUT = 600.0  # seconds; the 10,000-peer apply takes a few
IN_FORCE_TIMEOUT = 60.0  # seconds for a policy to be enforced after its apply call returned
TARGET = 0.05  # cilia at the largest N within 5% of cilia at 0
DATAPATHS = ("cilia", "iptables")
METRICS = {"throughput": "throughput_gbps", "latency_avg": "latency_avg_us", "latency_p99": "latency_p99_us",
           "connections_per_s": "connections_per_s"}


class BenchError(Exception):
    """A scenario could not be measured as intended."""


def describe(exc: BaseException) -> str:
    known = BenchError | KubeProxyError | policy_cost.BenchError
    return str(exc) if isinstance(exc, known) else f"{type(exc).__name__}: {exc}"


# ----- the objects -------------------------------------------------------------------------------------------
def cidr_peers(rules: int) -> list[dict[str, str]]:
    """`rules` distinct /32s in 172.16.0.0/12, the same addresses routed_iptables' rules match on."""
    return [{"cidr": f"172.{16 + i // 65536 % 16}.{i // 256 % 256}.{i % 256}/32"} for i in range(rules)]


def server_name(size: int) -> str:
    return f"bench-server-{size}"


def server_labels(size: int) -> dict[str, str]:
    return {"app": "bench-server", SIZE_LABEL: str(size)}


def scale_policy(rules: int) -> dict[str, Any]:
    """The policy of the server of size `rules`: the client on the measured ports, `rules` CIDR peers on TCP 1000."""
    client_ports = [{"port": str(port), "protocol": "TCP"} for port in PORTS.values()]
    return {
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": f"{POLICY_PREFIX}-{rules}", "namespace": "default"},
        "spec": {
            "endpointSelector": {"matchLabels": server_labels(rules)},
            "ingress": [
                {"fromEndpoints": [{"matchLabels": CLIENT_LABELS}], "toPorts": [{"ports": client_ports}]},
                {"fromCIDRSet": cidr_peers(rules), "toPorts": [{"ports": [{"port": "1000", "protocol": "TCP"}]}]},
            ],
        },
    }


# ----- the scenarios, all up at once -------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    """One datapath at one policy size: a client namespace and the server address it measures against."""

    datapath: str
    size: int
    client: str
    address: str

    @property
    def name(self) -> str:
        return f"{self.datapath}-{self.size}"


def probe_closed_port(client: str, server_ip: str) -> str:
    """'refused' if the server's stack answered (no policy), 'timed-out' if the policy dropped the SYN."""
    result = subprocess.run(ns(client, sys.executable, "-m", "cilia.lab.probe", "--to", server_ip,
                               "--port", str(PROBE_PORT), "--timeout", "1"),
                            capture_output=True, text=True, timeout=30, check=False)
    try:
        return str(json.loads(result.stdout.strip().splitlines()[-1])["verdict"])
    except (IndexError, KeyError, json.JSONDecodeError):
        return f"error: {result.stderr.strip()[-300:]}"


def wait_verdict(client: str, server_ip: str, expected: str, timeout: float = IN_FORCE_TIMEOUT) -> str:
    """Bounded: probe until the closed port answers as `expected` (a policy may be enforced a little
    after its apply call returned); the last verdict."""
    deadline = time.monotonic() + timeout
    while True:
        verdict = probe_closed_port(client, server_ip)
        if verdict == expected or time.monotonic() >= deadline:
            return verdict
        time.sleep(0.2)


def apply_policy(api: AgentClient, size: int) -> float:
    """Apply server `size`'s policy and wait until every endpoint enforces it; seconds that took."""
    start = time.monotonic()
    try:
        api.apply(ApplyRequest(objects=[scale_policy(size)]), wait=APPLY_TIMEOUT)
    except Exception as exc:
        raise BenchError(f"applying CiliumNetworkPolicy default/{POLICY_PREFIX}-{size} with {size} CIDR peers "
                         f"failed: {type(exc).__name__}: {exc}") from exc
    return round(time.monotonic() - start, 3)


def _cilia_side(stack: ExitStack, sizes: tuple[int, ...], out: dict[str, Any]) -> list[Scenario]:
    """The lab with the client and every size's server, every policy applied and checked in force."""
    cleanup_leftovers()
    pods = [{"name": "bench-client", "labels": CLIENT_LABELS},
            *({"name": server_name(size), "labels": server_labels(size)} for size in sizes)]
    lab = Lab.up(parse_topology({"pods": pods}))
    stack.callback(lab.down)
    client = lab.netns_of("bench-client")
    addresses = {size: lab.address_of(server_name(size)) for size in sizes}
    for size in sizes:
        for server in start_servers(lab.netns_of(server_name(size)), addresses[size]):
            stack.callback(server.stop)
    with AgentClient(NodePaths("n1").socket, timeout=APPLY_TIMEOUT) as api:
        for size in sizes:
            out["apply_seconds"][size] = apply_policy(api, size) if size else None
        for size in sizes:
            expected = "timed-out" if size else "refused"
            verdict = out["closed_port_probe"][size] = wait_verdict(client, addresses[size], expected)
            if verdict != expected:
                raise BenchError(f"at N={size} a connection to TCP {PROBE_PORT} on {server_name(size)} was "
                                 f"{verdict!r}, expected {expected!r}: the policy is not in force as intended")
        by_address = {e.ipv4: e for e in api.list_endpoints()}
    for size in sizes:
        endpoint = by_address.get(addresses[size])
        status = endpoint.policy if endpoint is not None else None
        selected = status.selected_by if status is not None else []
        out["endpoint_policy"][size] = {"selected_by": selected,
                                        "map_entries": status.map_entries if status is not None else None}
        wanted = [f"CiliumNetworkPolicy/default/{POLICY_PREFIX}-{size}"] if size else []
        if selected != wanted:
            raise BenchError(f"{server_name(size)} is selected by {selected}, expected {wanted}")
    for size in sizes:
        wait_reachable(client, addresses[size], PROBED_PORTS)
    return [Scenario("cilia", size, client, addresses[size]) for size in sizes]


def _iptables_side(stack: ExitStack, sizes: tuple[int, ...]) -> list[Scenario]:
    """One routed node per size, its FORWARD chain N rules long, a server in its second pod."""
    scenarios = []
    for k, size in enumerate(sizes):
        client, server, address = stack.enter_context(routed_iptables(size, f"cilia-bench-ipt{k}", f"10.{80 + k}"))
        for process in start_servers(server, address):
            stack.callback(process.stop)
        wait_reachable(client, address, PROBED_PORTS)
        scenarios.append(Scenario("iptables", size, client, address))
    return scenarios


def measure_round(scenarios: list[Scenario], seconds: int, index: int) -> dict[str, Figures]:
    """Every scenario once per tool: all throughputs, then all latencies, then all connection rates
    (a latency run right after a connection burst in the same namespace would pay for it). The order
    rotates with `index`: over len(scenarios) rounds each scenario takes every position once."""
    turn = index % len(scenarios)
    order = scenarios[turn:] + scenarios[:turn]
    throughput = {s.name: iperf3(s.client, None, s.address, seconds) for s in order}
    latency = {s.name: sockperf(s.client, None, s.address, seconds) for s in order}
    rate = {s.name: cps(s.client, None, s.address, seconds) for s in order}
    return {s.name: Figures(throughput_gbps=round(throughput[s.name], 2), latency_avg_us=round(latency[s.name][0], 2),
                            latency_p99_us=round(latency[s.name][1], 2), connections_per_s=round(rate[s.name], 0))
            for s in scenarios}


def run_datapaths(sizes: tuple[int, ...], seconds: int, repeats: int, only: set[str],
                  out: dict[str, Any]) -> None:
    """Both datapaths' scenarios up at once, then `repeats` rounds; a side that fails to come up is
    reported and the other is measured; a failing round ends the rounds (those done are kept)."""
    with ExitStack() as stack:
        scenarios: list[Scenario] = []
        for name in DATAPATHS:
            if name in only:
                try:
                    scenarios += _cilia_side(stack, sizes, out["cilia"]) if name == "cilia" else \
                        _iptables_side(stack, sizes)
                except Exception as exc:
                    out["errors"][name] = describe(exc)
                    print(f"{name}: FAILED: {out['errors'][name]}", file=sys.stderr, flush=True)
        if not scenarios:
            return
        out["scenarios"] = [s.name for s in scenarios]
        for index in range(repeats):
            try:
                figures = measure_round(scenarios, seconds, index)
            except Exception as exc:
                out["errors"]["rounds"] = f"round {index + 1}: {describe(exc)}"
                print(f"FAILED: {out['errors']['rounds']}", file=sys.stderr, flush=True)
                return
            out["rounds"].append(figures)
            print(f"round {index + 1}/{repeats}: " + "; ".join(f"{name} {f}" for name, f in figures.items()),
                  flush=True)


# ----- figures and ratios ------------------------------------------------------------------------------------
def per_round_ratios(rounds: list[dict[str, Figures]], a: str, b: str) -> dict[str, dict[str, float] | None]:
    """a/b for each metric: median and min-max of the ratios of the rounds that measured both."""
    result: dict[str, dict[str, float] | None] = {}
    for metric, field_name in METRICS.items():
        values = [getattr(r[a], field_name) / getattr(r[b], field_name) for r in rounds
                  if a in r and b in r and getattr(r[b], field_name)]
        result[metric] = policy_cost.ratio_stats(values) if values else None
    return result


def figures_of(rounds: list[dict[str, Figures]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per datapath and size: the median of the rounds and the spread (min, max) of each figure."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    names = list(rounds[0]) if rounds else []
    for name in names:
        datapath, size = name.rsplit("-", 1)
        samples = [r[name] for r in rounds]
        row: dict[str, Any] = {}
        for field_name in METRICS.values():
            values = [getattr(f, field_name) for f in samples]
            row[field_name] = round(median(values), 2)
            row[f"{field_name}_spread"] = [min(values), max(values)]
        out.setdefault(datapath, {})[size] = row
    return out


def ratios(rounds: list[dict[str, Figures]], sizes: tuple[int, ...]) -> dict[str, Any]:
    names = set(rounds[0]) if rounds else set()
    result: dict[str, Any] = {}
    for datapath in DATAPATHS:
        if f"{datapath}-0" in names:
            result[f"{datapath} N/0"] = {f"{size}/0": per_round_ratios(rounds, f"{datapath}-{size}", f"{datapath}-0")
                                         for size in sizes if size and f"{datapath}-{size}" in names}
    nonzero = [size for size in sizes if size]
    if len(nonzero) > 1:  # the size alone: both under a policy, one with many more peers
        low, high = nonzero[0], nonzero[-1]
        for datapath in DATAPATHS:
            if {f"{datapath}-{low}", f"{datapath}-{high}"} <= names:
                result[f"{datapath} {high}/{low}"] = per_round_ratios(rounds, f"{datapath}-{high}", f"{datapath}-{low}")
    result["cilia/iptables"] = {str(size): per_round_ratios(rounds, f"cilia-{size}", f"iptables-{size}")
                                for size in sizes if {f"cilia-{size}", f"iptables-{size}"} <= names}
    biggest = max(sizes)
    if biggest and {"cilia-0", f"cilia-{biggest}"} <= names:
        at = per_round_ratios(rounds, f"cilia-{biggest}", "cilia-0")
        throughput, latency = at["throughput"], at["latency_avg"]
        result["target"] = {
            "what": f"cilia at N={biggest} within {TARGET:.0%} of cilia at N=0 (throughput and latency, "
                    "medians of per-round ratios)",
            "throughput_met": throughput is not None and throughput["median"] >= 1 - TARGET,
            "latency_met": latency is not None and latency["median"] <= 1 + TARGET,
        }
    return result


# ----- main --------------------------------------------------------------------------------------------------
def run(seconds: int, repeats: int, only: set[str], sizes: tuple[int, ...] = SIZES, *,
        bpf_sizes: tuple[int, ...] = BPF_SIZES, bpf_rounds: int = 8,
        bpf_packets: int = policy_cost.SINGLE_CALLS) -> dict[str, Any]:
    """The parts `only` names (cilia, iptables, bpf) in one invocation; a failing part is reported
    under 'errors' and the others still run."""
    unknown = only - {*DATAPATHS, "bpf"}
    if unknown:
        raise SystemExit(f"--only: unknown part(s) {', '.join(sorted(unknown))} (known: cilia, iptables, bpf)")
    start = time.monotonic()
    out: dict[str, Any] = {"cilia": {"apply_seconds": {}, "closed_port_probe": {}, "endpoint_policy": {}},
                           "rounds": [], "errors": {}, "scenarios": []}
    if only & set(DATAPATHS):
        run_datapaths(sizes, seconds, repeats, only, out)
    bpf: dict[str, Any] | None = None
    if "bpf" in only:
        servers = {size: (server_labels(size), scale_policy(size) if size else None) for size in bpf_sizes}
        peer = cidr_peers(1)[0]["cidr"].split("/")[0]
        try:
            bpf = policy_cost.measure(CLIENT_LABELS, servers, peer, PROBE_PORT, bpf_rounds, bpf_packets)
        except Exception as exc:
            out["errors"]["bpf"] = describe(exc)
            print(f"bpf: FAILED: {out['errors']['bpf']}", file=sys.stderr, flush=True)
    rounds: list[dict[str, Figures]] = out["rounds"]
    cilia = out["cilia"]
    if bpf is not None and cilia["endpoint_policy"]:
        # the BPF half computes each server's map state itself: it must be as big as the agent's
        agent = {str(size): row["map_entries"] for size, row in cilia["endpoint_policy"].items()}
        mine = {size: n for size, n in bpf["map_entries"].items() if size in agent}
        bpf["map_entries_match_agent"] = agent == mine
        if agent != mine:
            out["errors"]["bpf"] = f"BPF half map entries {mine} differ from the agent's {agent}"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": seconds, "rounds_planned": repeats,
        "rounds_measured": len(rounds), "sizes": list(sizes), "scenarios": out["scenarios"],
        "policy": {"client_tcp_ports": PORTS, "cidr_peer_port": "TCP 1000", "closed_port_probe": PROBE_PORT},
        "figures": figures_of(rounds),
        "ratios": ratios(rounds, sizes),
        "cilia_policy_call_seconds": {str(k): v for k, v in cilia["apply_seconds"].items()},
        "cilia_closed_port_probe": {str(k): v for k, v in cilia["closed_port_probe"].items()},
        "cilia_endpoint_policy": {str(k): v for k, v in cilia["endpoint_policy"].items()},
        "bpf": bpf,
        "rounds": [{name: asdict(f) for name, f in r.items()} for r in rounds],
        "elapsed_seconds": round(time.monotonic() - start),
        "errors": out["errors"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="policy size vs per-packet cost: cilia CNP vs iptables rules")
    parser.add_argument("--seconds", type=int, default=1, help="per tool run")
    parser.add_argument("--repeats", type=int, default=12, help="rounds (each: every tool on every scenario)")
    parser.add_argument("--quick", action="store_true", help="1 s runs, 2 rounds, 2 BPF rounds of 200 packets each")
    parser.add_argument("--only", default="cilia,iptables,bpf", help="cilia, iptables, bpf (comma-separated)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="rule counts, ascending from 0")
    parser.add_argument("--bpf-sizes", default=",".join(map(str, BPF_SIZES)),
                        help="policy sizes of the BPF part, ascending from 0")
    parser.add_argument("--bpf-rounds", type=int, default=8)
    parser.add_argument("--bpf-packets", type=int, default=policy_cost.SINGLE_CALLS,
                        help="single-run calls per size and round (SYNs, and established packets)")
    args = parser.parse_args()
    seconds, repeats = (1, 2) if args.quick else (args.seconds, args.repeats)
    bpf_rounds, bpf_packets = (2, 200) if args.quick else (args.bpf_rounds, args.bpf_packets)
    try:
        sizes, bpf_sizes = (tuple(int(s) for s in text.split(",")) for text in (args.sizes, args.bpf_sizes))
    except ValueError:
        parser.error("--sizes, --bpf-sizes: comma-separated integers")
    if any(s[0] != 0 or list(s) != sorted(set(s)) for s in (sizes, bpf_sizes)):
        parser.error("--sizes and --bpf-sizes must start at 0 and ascend")
    if seconds < 1 or repeats < 1 or bpf_rounds < 1 or bpf_packets < 1:
        parser.error("--seconds, --repeats, --bpf-rounds and --bpf-packets must be at least 1")
    refuse_if_busy()
    results = run(seconds, repeats, set(args.only.split(",")), sizes, bpf_sizes=bpf_sizes, bpf_rounds=bpf_rounds,
                  bpf_packets=bpf_packets)
    write_results("policy", results)


if __name__ == "__main__":
    main()
