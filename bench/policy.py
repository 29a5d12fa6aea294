"""`python -m bench.policy [--quick] [--only cilia,iptables]`: does per-packet cost grow with policy size?

cilia: two lab pods (client {app: bench-client}, server {app: bench-server}). At N = 0 no policy
selects the server; at N > 0 one CiliumNetworkPolicy `default/bench-scale` selects it, allows the
client on exactly the TCP ports the measuring tools use (bench/tools.py: iperf3 5201, sockperf
--tcp 11111, the CPS meter 7777) and adds a second ingress rule with N distinct /32 `fromCIDRSet`
peers on TCP 1000 (N CIDR identities, ipcache entries and selector-map entries for the server).
The same policy name is re-applied with the next N (sizes ascend from 0).
Before measuring, a probe to a port nothing listens on checks the policy really is in force
(refused without a policy, dropped with one).

Baseline in the same run: bench/topologies.py `routed_iptables(N)`, a routed node whose FORWARD
chain holds N non-matching rules ahead of the ACCEPT.

Reports figures per N, how long the policy apply took, and ratios: each datapath at N against
itself at 0 (target for cilia: within 5% at 10,000) and cilia against iptables at each N.
Printed and written to build/bench/policy-<time>.json; exit status 1 if a scenario failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Any

from bench.run import cilia_pods
from bench.tools import Figures, measure, ns, refuse_if_busy, write_results
from bench.topologies import routed_iptables
from cilia.api.client import AgentClient
from cilia.api.models import ApplyRequest
from cilia.paths import NodePaths

SIZES = (0, 1000, 10000)
POLICY_NAME = "bench-scale"
# Every port bench/tools.py measures on; all TCP (sockperf runs with --tcp, no UDP anywhere).
MEASURED_PORTS = {"iperf3": 5201, "sockperf": 11111, "cps": 7777}
PROBE_PORT = 5999  # nothing listens here and the policy does not allow it
APPLY_TIMEOUT = 600.0  # seconds; the 10,000-peer apply takes a few
TARGET = 0.05  # cilia at 10,000 within 5% of cilia at 0


class BenchError(Exception):
    """A scenario could not be measured as intended."""


def cidr_peers(rules: int) -> list[dict[str, str]]:
    """`rules` distinct /32s in 172.16.0.0/12, the same addresses routed_iptables' rules match on."""
    return [{"cidr": f"172.{16 + i // 65536 % 16}.{i // 256 % 256}.{i % 256}/32"} for i in range(rules)]


def scale_policy(rules: int) -> dict[str, Any]:
    client_ports = [{"port": str(port), "protocol": "TCP"} for port in MEASURED_PORTS.values()]
    return {
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": POLICY_NAME, "namespace": "default"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "bench-server"}},
            "ingress": [
                {"fromEndpoints": [{"matchLabels": {"app": "bench-client"}}], "toPorts": [{"ports": client_ports}]},
                {"fromCIDRSet": cidr_peers(rules), "toPorts": [{"ports": [{"port": "1000", "protocol": "TCP"}]}]},
            ],
        },
    }


def probe_closed_port(client: str, server_ip: str) -> str:
    """'refused' if the server's stack answered (no policy), 'timed-out' if the policy dropped the SYN."""
    result = subprocess.run(ns(client, sys.executable, "-m", "cilia.lab.probe", "--to", server_ip,
                               "--port", str(PROBE_PORT), "--timeout", "1"),
                            capture_output=True, text=True, timeout=30, check=False)
    try:
        return str(json.loads(result.stdout.strip().splitlines()[-1])["verdict"])
    except (IndexError, KeyError, json.JSONDecodeError):
        return f"error: {result.stderr.strip()[-300:]}"


def apply_policy(size: int) -> float:
    """Apply (or replace, same name) the policy with `size` CIDR peers; seconds the API call took."""
    start = time.monotonic()
    try:
        with AgentClient(NodePaths("n1").socket, timeout=APPLY_TIMEOUT) as api:
            api.apply(ApplyRequest(objects=[scale_policy(size)]))
    except Exception as exc:
        raise BenchError(f"applying CiliumNetworkPolicy default/{POLICY_NAME} with {size} CIDR peers failed: "
                         f"{type(exc).__name__}: {exc}") from exc
    return round(time.monotonic() - start, 2)


def run_cilia(sizes: tuple[int, ...], seconds: int, repeats: int, out: dict[str, Any]) -> None:
    """Fills out['figures'], out['apply_seconds'], out['closed_port_probe'] as it goes, so a failure keeps
    what was measured before it. The lab is torn down whatever happens."""
    lab, client, server, ip = cilia_pods()
    try:
        for size in sizes:  # ascending from 0: no policy at first, then the same name replaced
            out["apply_seconds"][size] = apply_policy(size) if size else None
            expected = "timed-out" if size else "refused"
            verdict = probe_closed_port(client, ip)
            out["closed_port_probe"][size] = verdict
            if verdict != expected:
                raise BenchError(f"at N={size} a connection to TCP {PROBE_PORT} on the server was {verdict!r}, "
                                 f"expected {expected!r}: the policy is not in force as intended")
            figures = measure(client, server, ip, seconds, repeats)
            out["figures"][size] = figures
            print(f"cilia N={size}: {figures} (policy call {out['apply_seconds'][size]} s)", flush=True)
    finally:
        lab.down()


def run_iptables(sizes: tuple[int, ...], seconds: int, repeats: int, out: dict[str, Any]) -> None:
    for size in sizes:
        with routed_iptables(size) as (a, b, ip):
            figures = measure(a, b, ip, seconds, repeats)
        out["figures"][size] = figures
        print(f"iptables N={size}: {figures}", flush=True)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def compare(a: Figures, b: Figures) -> dict[str, float | None]:
    return {"throughput": _ratio(a.throughput_gbps, b.throughput_gbps),
            "latency_avg": _ratio(a.latency_avg_us, b.latency_avg_us),
            "latency_p99": _ratio(a.latency_p99_us, b.latency_p99_us),
            "connections_per_s": _ratio(a.connections_per_s, b.connections_per_s)}


def ratios(cilia: dict[int, Figures], iptables: dict[int, Figures]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, table in (("cilia", cilia), ("iptables", iptables)):
        if 0 in table:
            result[f"{name} N/0"] = {f"{size}/0": compare(f, table[0]) for size, f in table.items() if size}
    result["cilia/iptables"] = {str(size): compare(cilia[size], iptables[size])
                                for size in cilia if size in iptables}
    biggest = max((size for size in cilia if size), default=None)
    if biggest is not None and 0 in cilia:
        at = compare(cilia[biggest], cilia[0])
        throughput, latency = at["throughput"], at["latency_avg"]
        result["target"] = {
            "what": f"cilia at N={biggest} within {TARGET:.0%} of cilia at N=0 (throughput and latency)",
            "throughput_met": throughput is not None and throughput >= 1 - TARGET,
            "latency_met": latency is not None and latency <= 1 + TARGET,
        }
    return result


def run(seconds: int, repeats: int, only: set[str], sizes: tuple[int, ...] = SIZES) -> dict[str, Any]:
    """Both halves (as `only` says) in one invocation; a failing half is reported under 'errors'."""
    scenarios = {"cilia": run_cilia, "iptables": run_iptables}
    unknown = only - set(scenarios)
    if unknown:
        raise SystemExit(f"--only: unknown scenario(s) {', '.join(sorted(unknown))} (known: cilia, iptables)")
    parts: dict[str, dict[str, Any]] = {
        "cilia": {"figures": {}, "apply_seconds": {}, "closed_port_probe": {}},
        "iptables": {"figures": {}},
    }
    errors: dict[str, str] = {}
    for name, scenario in scenarios.items():
        if name not in only:
            continue
        try:
            scenario(sizes, seconds, repeats, parts[name])
        except Exception as exc:  # report, keep what was measured, go on with the other half
            errors[name] = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
            print(f"{name}: FAILED: {errors[name]}", file=sys.stderr, flush=True)
    cilia, iptables = parts["cilia"]["figures"], parts["iptables"]["figures"]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": seconds, "repeats": repeats, "sizes": list(sizes),
        "policy": {"client_tcp_ports": MEASURED_PORTS, "cidr_peer_port": "TCP 1000",
                   "closed_port_probe": PROBE_PORT},
        "figures": {name: {str(size): asdict(f) for size, f in parts[name]["figures"].items()}
                    for name in scenarios if name in only},
        "cilia_policy_call_seconds": {str(k): v for k, v in parts["cilia"]["apply_seconds"].items()},
        "cilia_closed_port_probe": {str(k): v for k, v in parts["cilia"]["closed_port_probe"].items()},
        "ratios": ratios(cilia, iptables),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="policy size vs per-packet cost: cilia CNP vs iptables rules")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 s runs, one repeat")
    parser.add_argument("--only", default="cilia,iptables", help="cilia, iptables or both (comma-separated)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="rule counts, ascending from 0")
    args = parser.parse_args()
    seconds, repeats = (2, 1) if args.quick else (args.seconds, args.repeats)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    if sizes[0] != 0 or list(sizes) != sorted(set(sizes)):
        parser.error("--sizes must start at 0 and ascend")
    refuse_if_busy()
    results = run(seconds, repeats, set(args.only.split(",")), sizes)
    write_results("policy", results)

if __name__ == "__main__":
    main()
