"""Cross-node pod-to-pod (`python -m bench.crossnode`): cilia's two-node lab against the same two
nodes wired by plain Linux with no BPF, in native routing and in VXLAN tunnel mode.

Baselines, in cilia-bench-x* namespaces (never the root namespace; removed also on failure), shaped
like the lab: a fabric namespace holding a bridge, two node namespaces on it (eth0, 10.81.0.11 and
.12/24), behind each node one pod namespace on a veth (pod 10.82.<i>.2/24, node side 10.82.<i>.1,
the pod's default gateway); the nodes forward.
- `native` (against cilia `routing: native`): each node routes the other's pod /24 via the other
  node's underlay address: pod -> veth -> node's IP forwarding -> bridge -> node -> veth -> pod.
- `tunnel` (against cilia `routing: tunnel`): a VXLAN device per node (`vxlan0`, VNI 42, UDP 8472
  like cilia_vxlan, the other node as its remote, 10.83.0.<i>/24 on it) carrying the other node's pod
  /24; pod veths at MTU 1450 (cilia lowers the pod MTU by the same 50 bytes).
- `fabric` (against a two-node lab without cluster routing: the lab's fabric routes the pod CIDRs):
  the nodes' default route goes to the fabric, which routes each pod /24 to its node.

cilia: `running_lab` with two nodes (n1, n2), one pod on each (bench-client on n1, bench-server on
n2), `kvstore: etcd` (one member) and the mode's `routing` (the `fabric` mode: the plain two-node lab). The
pods' tools run in their pods' cgroups (where cilia's socket hooks are, as a pod's processes are).

Both sides of a mode are up at once and measured in alternating rounds (each tool on both sides
before the next tool, the side that goes first alternating): iperf3 single-stream TCP throughput,
sockperf TCP ping-pong latency (64 B, one-way = RTT/2; avg, p50, p99), connections/s (connect and
close in a loop). Client and server are pinned together to CPU 1 (taskset; `--no-pin` leaves them
free) on every side: the same placement for all, the other core left to the agents and the rest of
the machine. (Client on CPU 0 and server on CPU 1 was tried: on this 2-vCPU VM each ping-pong then
pays a cross-vCPU wake-up, 77-100 us one-way against 15-18 us on one core or unpinned.)
`--repeats N` runs each tool N times per side within a round, the sides interleaved A B B A ...,
and keeps the median of each side's runs. Reported: the medians over the rounds and the median of
the per-round ratios cilia / baseline (targets: throughput >= 0.95x, latency <= 1.05x).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from statistics import median
from typing import Any, TypeVar

from bench.stats import median_ratio
from bench.tools import CGROUPS, PIN, cps, iperf3, ns, sockperf_latency, write_results
from bench.topologies import delete, sh
from cilia.testing.wait import WaitTimeout, wait_for

PREFIX = "cilia-bench-x"
MODES = ("native", "tunnel", "fabric")
BASELINE_NAMES = {"native": "linux routing", "tunnel": "linux vxlan", "fabric": "linux routed via the fabric"}
UNDERLAY = ("10.81.0.11", "10.81.0.12")
FABRIC_GATEWAY = "10.81.0.1"
VXLAN_VNI, VXLAN_PORT, VXLAN_OVERHEAD = 42, 8472, 50
CLIENT_CPU, SERVER_CPU = 1, 1  # one core for both: see the module docstring
THROUGHPUT_TARGET, LATENCY_TARGET = 0.95, 1.05


@dataclass(frozen=True)
class Side:
    """What one round measured on one side (a baseline or cilia)."""

    throughput_gbps: float
    latency_avg_us: float
    latency_p50_us: float
    latency_p99_us: float
    connections_per_s: float


@dataclass(frozen=True)
class Endpoints:
    """Where a side's tools run: the client's and the server's netns and the server's address."""

    client: str
    server: str
    server_ip: str


def pod_subnet(index: int) -> str:
    return f"10.82.{index}"


def names(prefix: str = PREFIX) -> tuple[str, tuple[str, str], tuple[str, str]]:
    """(fabric, (node 1, node 2), (pod 1, pod 2)) namespace names."""
    return f"{prefix}fab", (f"{prefix}n1", f"{prefix}n2"), (f"{prefix}p1", f"{prefix}p2")


def in_ns(netns: str, *args: str) -> None:
    sh("nsenter", f"--net=/run/netns/{netns}", *args)


@contextmanager
def baseline(mode: str, prefix: str = PREFIX) -> Iterator[Endpoints]:
    """The two-node plain-Linux topology of `mode` (see the module docstring); yields pod 1 as the
    client and pod 2 as the server. Every namespace is removed on exit, also after a failure."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
    fab, nodes, pods = names(prefix)
    everything = (*pods, *nodes, fab)
    delete(*everything)
    try:
        for name in everything:
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", fab, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", fab, "addr", "add", f"{FABRIC_GATEWAY}/24", "dev", "br0")
        sh("ip", "-n", fab, "link", "set", "br0", "up")
        in_ns(fab, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        pod_mtu = 1500 - VXLAN_OVERHEAD if mode == "tunnel" else 1500
        for i, (node, pod) in enumerate(zip(nodes, pods, strict=True), start=1):
            sh("ip", "-n", fab, "link", "add", f"n{i}", "type", "veth", "peer", "name", "eth0", "netns", node)
            sh("ip", "-n", fab, "link", "set", f"n{i}", "master", "br0", "up")
            sh("ip", "-n", node, "addr", "add", f"{UNDERLAY[i - 1]}/24", "dev", "eth0")
            sh("ip", "-n", node, "link", "set", "eth0", "up")
            in_ns(node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            sh("ip", "-n", node, "link", "add", "lxc0", "mtu", str(pod_mtu), "type", "veth", "peer", "name", "eth0",
               "mtu", str(pod_mtu), "netns", pod)
            sh("ip", "-n", node, "addr", "add", f"{pod_subnet(i)}.1/24", "dev", "lxc0")
            sh("ip", "-n", node, "link", "set", "lxc0", "up")
            sh("ip", "-n", pod, "addr", "add", f"{pod_subnet(i)}.2/24", "dev", "eth0")
            sh("ip", "-n", pod, "link", "set", "eth0", "up")
            sh("ip", "-n", pod, "route", "add", "default", "via", f"{pod_subnet(i)}.1")
        for i, node in enumerate(nodes, start=1):
            other = 3 - i
            if mode == "native":
                sh("ip", "-n", node, "route", "add", f"{pod_subnet(other)}.0/24", "via", UNDERLAY[other - 1])
            elif mode == "fabric":
                sh("ip", "-n", node, "route", "add", "default", "via", FABRIC_GATEWAY)
                sh("ip", "-n", fab, "route", "add", f"{pod_subnet(i)}.0/24", "via", UNDERLAY[i - 1])
            else:
                sh("ip", "-n", node, "link", "add", "vxlan0", "type", "vxlan", "id", str(VXLAN_VNI), "dstport",
                   str(VXLAN_PORT), "local", UNDERLAY[i - 1], "remote", UNDERLAY[other - 1], "dev", "eth0")
                sh("ip", "-n", node, "addr", "add", f"10.83.0.{i}/24", "dev", "vxlan0")
                sh("ip", "-n", node, "link", "set", "vxlan0", "up")
                sh("ip", "-n", node, "route", "add", f"{pod_subnet(other)}.0/24", "via", f"10.83.0.{other}")
        yield Endpoints(pods[0], pods[1], f"{pod_subnet(2)}.2")
    finally:
        delete(*everything)


def lab_topology(mode: str) -> dict[str, Any]:
    """The two-node cilia lab of `mode`: fabric = today's lab (no cluster routing)."""
    topology: dict[str, Any] = {
        "nodes": [{"name": "n1"}, {"name": "n2"}],
        "pods": [{"name": "bench-client", "node": "n1", "labels": {"app": "bench-client"}},
                 {"name": "bench-server", "node": "n2", "labels": {"app": "bench-server"}}],
    }
    if mode != "fabric":
        # One etcd member: etcd is not on the datapath, and two fewer members leave the CPU to the
        # measurement on a 2-core machine.
        topology.update({"kvstore": "etcd", "etcd": {"members": 1}, "routing": mode})
    return topology


@contextmanager
def cilia_lab(mode: str, in_cgroups: bool = True) -> Iterator[Endpoints]:
    """A running two-node cilia lab (torn down on exit); its pods' tools run in their cgroups
    (in_cgroups False: outside every node's cgroup, without the socket hooks)."""
    from cilia.testing.labs import running_lab  # only this side needs the lab

    with running_lab(lab_topology(mode)) as lab:
        client, server = lab.netns_of("bench-client"), lab.netns_of("bench-server")
        for pod, netns in (("bench-client", client), ("bench-server", server)):
            cgroup = lab.cgroup_of(pod)
            if cgroup is not None and in_cgroups:
                CGROUPS[netns] = str(cgroup)
        try:
            yield Endpoints(client, server, lab.address_of("bench-server"))
        finally:
            CGROUPS.pop(client, None)
            CGROUPS.pop(server, None)


# A TCP connect to a port nothing listens on: refused (an RST came back) or accepted means the
# server's address answers; a timeout means it does not (yet). No ping binary on this machine.
_ANSWERS = """
import socket, sys
s = socket.socket(); s.settimeout(1.0)
try:
    s.connect((sys.argv[1], 9))
except ConnectionRefusedError:
    pass
except OSError:
    sys.exit(1)
"""


def wait_reachable(side: Endpoints, timeout: float = 20.0) -> None:
    """Bounded: until the server's address answers the client (a cluster's routes and ipcache may
    still be on their way when the lab is up)."""
    def answers() -> bool:
        return subprocess.run(ns(side.client, sys.executable, "-c", _ANSWERS, side.server_ip), capture_output=True,
                              timeout=10, check=False).returncode == 0

    wait_for(answers, timeout, 0.2, f"{side.server_ip} not reachable from {side.client} within {timeout:.0f} s")


T = TypeVar("T")


def interleaved(order: list[str], repeats: int, run: Callable[[str], T]) -> dict[str, list[T]]:
    """`run` for every side `repeats` times, the sides alternating A B B A A B ... so that a slow
    spell of the machine (the other work on it) falls on both sides alike."""
    out: dict[str, list[T]] = {s: [] for s in order}
    for k in range(repeats):
        for s in (order if k % 2 == 0 else list(reversed(order))):
            out[s].append(run(s))
    return out


def measure_round(sides: dict[str, Endpoints], order: list[str], seconds: int, repeats: int = 1) -> dict[str, Side]:
    """One round: each tool on every side (in `order`, `repeats` times interleaved, the median
    kept) before the next tool."""
    def on(s: str) -> tuple[str, str, str]:
        return sides[s].client, sides[s].server, sides[s].server_ip

    throughput = interleaved(order, repeats, lambda s: iperf3(*on(s), seconds))
    latency = interleaved(order, repeats, lambda s: sockperf_latency(*on(s), seconds))
    rate = interleaved(order, repeats, lambda s: cps(*on(s), seconds))
    return {s: Side(round(median(throughput[s]), 2), round(median(x.avg_us for x in latency[s]), 2),
                    round(median(x.p50_us for x in latency[s]), 2), round(median(x.p99_us for x in latency[s]), 2),
                    round(median(rate[s]), 0)) for s in order}


def medians(rounds: list[dict[str, Side]], side: str) -> Side:
    items = [r[side] for r in rounds]
    return Side(*(round(median(getattr(i, f) for i in items), 2) for f in Side.__dataclass_fields__))


def ratios(rounds: list[dict[str, Side]], baseline_side: str, side: str) -> dict[str, float | None]:
    """Medians of the per-round ratios side / baseline for each figure."""
    out: dict[str, float | None] = {}
    for name in Side.__dataclass_fields__:
        value = median_ratio((getattr(r[baseline_side], name), getattr(r[side], name)) for r in rounds)
        out[name] = None if value is None else round(value, 3)
    return out


def verdicts(ratio: dict[str, float | None]) -> dict[str, str]:
    throughput, latency = ratio.get("throughput_gbps"), ratio.get("latency_avg_us")
    return {"throughput (>= 0.95x)": "-" if throughput is None else ("met" if throughput >= THROUGHPUT_TARGET
                                                                     else "missed"),
            "latency avg (<= 1.05x)": "-" if latency is None else ("met" if latency <= LATENCY_TARGET else "missed")}


def run_mode(mode: str, seconds: int, rounds: int, with_cilia: bool, pin: bool = True,
             in_cgroups: bool = True, repeats: int = 1) -> dict[str, Any]:
    """Baseline (and cilia) of one mode, up together, `rounds` alternating rounds."""
    base = BASELINE_NAMES[mode]
    out: dict[str, Any] = {"baseline": base}
    started = time.monotonic()
    with baseline(mode) as linux:
        sides = {base: linux}
        lab: AbstractContextManager[Endpoints] | None = cilia_lab(mode, in_cgroups) if with_cilia else None
        try:
            if lab is not None:
                try:
                    sides["cilia"] = lab.__enter__()
                except Exception as exc:  # the cluster lab may not have landed: the baseline still runs
                    lab = None
                    out["cilia_error"] = f"{type(exc).__name__}: {exc}"[:2000]
                    print(f"{mode}: cilia lab not measured: {out['cilia_error']}", file=sys.stderr, flush=True)
            for name, side in sides.items():
                if pin:
                    PIN[side.client], PIN[side.server] = CLIENT_CPU, SERVER_CPU
                try:
                    wait_reachable(side)
                except WaitTimeout as exc:
                    if name == base:
                        raise
                    out["cilia_error"] = str(exc)
            if "cilia_error" in out:
                sides.pop("cilia", None)
            measured: list[dict[str, Side]] = []
            for index in range(rounds):
                order = list(sides) if index % 2 == 0 else list(reversed(sides))
                result = measure_round(sides, order, seconds, repeats)
                print(f"{mode} round {index + 1}/{rounds}: " + "; ".join(f"{s} {result[s]}" for s in order), flush=True)
                measured.append(result)
            out["rounds"] = [{s: asdict(r[s]) for s in r} for r in measured]
            out["medians"] = {s: asdict(medians(measured, s)) for s in sides}
            if "cilia" in sides:
                out["ratios cilia/baseline (median of per-round ratios)"] = ratio = ratios(measured, base, "cilia")
                out["targets"] = verdicts(ratio)
        finally:
            for side in sides.values():
                PIN.pop(side.client, None)
                PIN.pop(side.server, None)
            if lab is not None:
                lab.__exit__(None, None, None)
    out["seconds_taken"] = round(time.monotonic() - started, 1)
    return out


def run(modes: list[str], seconds: int, rounds: int, with_cilia: bool, pin: bool = True, in_cgroups: bool = True,
        progress: Callable[[str], None] = print, repeats: int = 1) -> dict[str, Any]:
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "seconds": seconds, "rounds": rounds,
                               "repeats": repeats,
                               "pinning": {"client": CLIENT_CPU, "server": SERVER_CPU} if pin else None,
                               "cilia_tools_in_pod_cgroups": in_cgroups, "modes": {}}
    errors = []
    for mode in modes:
        progress(f"== {mode}")
        try:
            results["modes"][mode] = run_mode(mode, seconds, rounds, with_cilia, pin, in_cgroups, repeats)
        except Exception as exc:  # one mode failing still reports the others
            errors.append(f"{mode}: {type(exc).__name__}: {exc}")
    if errors:
        results["errors"] = errors
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="cross-node pod-to-pod: cilia against plain Linux routing / VXLAN")
    parser.add_argument("--modes", default="native,tunnel", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each tool per side in a round, interleaved (the round keeps their median)")
    parser.add_argument("--baseline-only", action="store_true", help="no cilia lab")
    parser.add_argument("--no-pin", action="store_true", help="leave the tools unpinned")
    parser.add_argument("--outside-cgroups", action="store_true",
                        help="cilia's tools outside the pods' cgroups (no socket hooks on their connects)")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(sorted(unknown))}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    write_results("crossnode", run(modes, args.seconds, args.rounds, not args.baseline_only, not args.no_pin,
                                     not args.outside_cgroups, repeats=args.repeats))


if __name__ == "__main__":
    main()
