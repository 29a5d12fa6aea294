"""`python -m bench.services [--quick] [--only iptables|cilia] [--sizes 10,1000,10000] [--iptables legacy,nft]`:
does the cost of reaching a Service grow with the number of Services, cilia's eBPF load balancer
against kube-proxy's iptables mode?

At each size N the node holds N ClusterIP services: N - 1 fillers (default/filler-<i>, 10.96.0.16 + i,
port 80 -> 8080, one EndpointSlice of 10 endpoints that do not exist: never hit, they only make the
tables big) and the measured default/bench-svc (10.96.0.10), one named TCP port per measuring tool
(bench/tools.py PORTS: iperf3 5201, sockperf 11111, the CPS meter 7777), balanced over two server
pods that run every tool's server. From a client pod, against the ClusterIP:

- request/response latency: sockperf TCP ping-pong, 64 B (one-way = RTT/2), one connection;
- new connections per second: the CPS meter (connect/close loop), each connection balanced anew.
- no throughput: iperf3's control and data connections may be balanced to different backends.

Scenarios, all up at the same time at each N and measured in alternating rounds (`--repeats`
rounds, each running every scenario once, in an order that rotates from round to round), so a
ratio is the median of per-round ratios and the machine's drift between rounds cancels out:
- iptables-legacy, iptables-nft (bench/kubeproxy.py): kube-proxy is not installable here, so its
  iptables proxier's rules (v1.28 layout: KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-* with
  statistic/DNAT, the measured service in the middle of KUBE-SERVICES, the average position under
  kube-proxy's random order) are written and loaded into a node namespace the way kube-proxy loads
  them, with a client and two backend pods on veths; one node per iptables backend (--iptables;
  kube-proxy's image carries both and uses the host's). A new connection walks KUBE-SERVICES in the
  nat table; established ones skip nat, so latency is expected flat and connections/s to fall with N.
- cilia (per-packet: the client's tools outside the node's cgroup, tc DNAT on every packet, like
  kube-proxy), cilia-socket (the same tools in the client pod's cgroup: translated at connect()),
  and cilia-direct (straight to one server pod's address, no service: the baseline that flatness is
  judged against). One lab (cilia.lab) with bench-client and two bench-server pods
  ({app: bench-server}); the fillers (Service + EndpointSlice each) are applied through the agent
  API in batches of 500 objects, added as N grows; bench-svc selects the server pods.

Control plane, at the largest N (10,000 services x 10 endpoints by default), from nothing:
- cilia: wall clock of the apply calls for all services and slices; then one EndpointSlice changed
  (one endpoint replaced), one apply call, 3 times.
- iptables: kube_proxy.control_plane(): the first restore, one service changed the way kube-proxy
  syncs it (MinimizeIPTablesRestore), and a full resync.

Targets: cilia flat from the smallest N to the largest (connections/s and latency, each relative to
cilia-direct in the same rounds, not worse by more than 5%), cilia ahead of iptables at every N
(more connections/s, lower latency, per-round ratios), one change under 10 ms at 10,000, full
programming under 30 s.

Printed and written to build/bench/services-<time>.json; exit status 1 if a half failed (what it
measured before failing is kept).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from statistics import median
from typing import Any

from bench import tools
from bench.kubeproxy import (
    BACKENDS,
    CHANGED_BACKENDS,
    FILLER_PORT,
    FILLER_TARGET_PORT,
    MEASURED_CLUSTER_IP,
    MEASURED_SERVICE,
    KubeProxyError,
    ServiceFigures,
    cluster_ip,
    control_plane,
    filler_backend,
    kube_proxy_node,
    median_figures,
    start_servers,
    wait_reachable,
)
from bench.tools import PORTS, Server, refuse_if_busy, write_results
from cilia.api.client import AgentClient
from cilia.api.models import ApplyRequest
from cilia.lab.lab import Lab, cleanup_leftovers
from cilia.lab.topology import parse_topology
from cilia.paths import NodePaths

SIZES = (10, 1000, 10000)
BACKENDS_PER_FILLER = 10
APPLY_BATCH = 500  # objects per apply call
# 10,000 services x (1 + 10 slots) exceed Cilium's default 65536 entries of the service map
CILIA_AGENT_ARGS = ["--bpf-lb-map-max", "262144"]
APPLY_TIMEOUT = 600.0  # seconds, per call
CHANGES = 3  # one-service changes timed at the largest N
REACHABLE_TIMEOUT = 60.0  # seconds for bench-svc to answer after an apply
FLAT_TARGET = 0.05
CHANGE_TARGET_SECONDS = 0.010
PROGRAM_TARGET_SECONDS = 30.0
SERVERS = ("bench-server-1", "bench-server-2")
PROBED_PORTS = (PORTS["sockperf"], PORTS["cps"])  # iperf3's server logs an error on a bare connect


class BenchError(Exception):
    """A scenario could not be measured as intended."""


def describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, BenchError | KubeProxyError) else f"{type(exc).__name__}: {exc}"


# ----- the objects cilia is given (the same services the iptables half writes rules for) ------------------
def filler_service(i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"filler-{i}", "namespace": "default"},
            "spec": {"clusterIP": cluster_ip(i),
                     "ports": [{"port": FILLER_PORT, "protocol": "TCP", "targetPort": FILLER_TARGET_PORT}]}}


def filler_slice(i: int, backends: int, changed: int = 0) -> dict[str, Any]:
    """filler-<i>'s EndpointSlice; `changed` > 0: its first `changed` endpoints replaced by new addresses
    (as kubeproxy.control_plane changes them)."""
    addresses = [filler_backend(i, j, backends) for j in range(backends)]
    for k in range(min(changed, backends)):
        addresses[k] = str(CHANGED_BACKENDS + k)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"filler-{i}-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": f"filler-{i}"}},
            "addressType": "IPv4", "endpoints": [{"addresses": [a]} for a in addresses],
            "ports": [{"port": FILLER_TARGET_PORT, "protocol": "TCP"}]}


def filler_objects(start: int, stop: int, backends: int) -> list[dict[str, Any]]:
    """Fillers start..stop-1, each Service followed by its EndpointSlice."""
    return [obj for i in range(start, stop) for obj in (filler_service(i), filler_slice(i, backends))]


def measured_service() -> dict[str, Any]:
    namespace, name = MEASURED_SERVICE
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"app": "bench-server"}, "clusterIP": MEASURED_CLUSTER_IP,
                     "ports": [{"name": tool, "port": port, "protocol": "TCP", "targetPort": port}
                               for tool, port in PORTS.items()]}}


def apply_objects(api: AgentClient, objects: list[dict[str, Any]]) -> float:
    """Apply in calls of APPLY_BATCH objects; seconds the calls took, together."""
    elapsed = 0.0
    for first in range(0, len(objects), APPLY_BATCH):
        batch = objects[first:first + APPLY_BATCH]
        start = time.monotonic()
        try:
            api.apply(ApplyRequest(objects=batch))
        except Exception as exc:
            raise BenchError(f"applying objects {first}-{first + len(batch) - 1} of {len(objects)} failed: "
                             f"{type(exc).__name__}: {exc}") from exc
        elapsed += time.monotonic() - start
    return elapsed


# ----- the data plane: every scenario up at once, measured in alternating rounds ---------------------------
@dataclass
class Scenario:
    """One way of reaching the measured service: from which namespace, to which address, in which cgroup."""

    name: str
    client: str
    address: str
    cgroup: str | None = None

    @contextmanager
    def _in_cgroup(self) -> Iterator[None]:
        if self.cgroup:  # the client's tools join the cgroup, so the socket hooks see them
            tools.CGROUPS[self.client] = self.cgroup
        try:
            yield
        finally:
            tools.CGROUPS.pop(self.client, None)

    def latency(self, seconds: int) -> tuple[float, float]:
        with self._in_cgroup():
            return tools.sockperf(self.client, None, self.address, seconds)

    def connection_rate(self, seconds: int) -> float:
        with self._in_cgroup():
            return tools.cps(self.client, None, self.address, seconds)


def measure_round(scenarios: list[Scenario], seconds: int, index: int) -> dict[str, ServiceFigures]:
    """Every scenario once: all latencies first, then all connection rates (a latency run right after
    a connection-rate run in the same namespace would pay for its TIME_WAIT sockets and conntrack
    entries). The order rotates with `index`, so over len(scenarios) rounds each scenario takes every
    position once and no scenario is always the one that runs after another's burst."""
    turn = index % len(scenarios)
    order = scenarios[turn:] + scenarios[:turn]
    latencies = {s.name: s.latency(seconds) for s in order}
    rates = {s.name: s.connection_rate(seconds) for s in order}
    return {s.name: ServiceFigures(latency_avg_us=round(latencies[s.name][0], 2),
                                   latency_p99_us=round(latencies[s.name][1], 2),
                                   connections_per_s=round(rates[s.name], 0)) for s in scenarios}


def _cilia_lab() -> Lab:
    cleanup_leftovers()
    return Lab.up(parse_topology({"pods": [{"name": "bench-client", "labels": {"app": "bench-client"}},
                                           *({"name": name, "labels": {"app": "bench-server"}} for name in SERVERS)]}),
                  agent_args=CILIA_AGENT_ARGS)


def _cilia_scenarios(lab: Lab) -> list[Scenario]:
    client = lab.netns_of("bench-client")
    return [
        # per-packet path: the client's tools outside the node's cgroup (tc DNAT per packet, like kube-proxy)
        Scenario("cilia", client, MEASURED_CLUSTER_IP),
        # socket path: the same tools in the client pod's cgroup (translated once, at connect())
        Scenario("cilia-socket", client, MEASURED_CLUSTER_IP, str(lab.cgroup_of("bench-client"))),
        # no service at all, straight to one server pod: the baseline that cancels the machine's drift
        Scenario("cilia-direct", client, lab.address_of(SERVERS[0])),
    ]


def _grow_cilia(lab: Lab, applied: int, size: int, out: dict[str, Any]) -> None:
    with AgentClient(NodePaths("n1").socket, timeout=APPLY_TIMEOUT) as api:
        if applied == 0:
            out["setup"]["cilia"]["bench-svc"] = round(apply_objects(api, [measured_service()]), 3)
        fillers = filler_objects(applied, size - 1, BACKENDS_PER_FILLER)  # those of the smaller sizes stay
        out["setup"]["cilia"][size] = round(apply_objects(api, fillers), 3)
    try:
        wait_reachable(lab.netns_of("bench-client"), MEASURED_CLUSTER_IP, PROBED_PORTS, REACHABLE_TIMEOUT)
    except KubeProxyError as exc:
        raise BenchError(f"at N={size} bench-svc ({MEASURED_CLUSTER_IP}) does not answer: {exc}") from exc


def _datapath(sizes: tuple[int, ...], seconds: int, repeats: int, only: set[str], backends: list[str],
              out: dict[str, Any]) -> None:
    """At each size: cilia's lab grows to N services and a kube-proxy node per iptables backend is
    loaded with N; then `repeats` rounds, each measuring every scenario once in turn."""
    lab = _cilia_lab() if "cilia" in only else None
    servers: list[Server] = []
    try:
        cilia: list[Scenario] = []
        if lab is not None:
            for name in SERVERS:
                servers += start_servers(lab.netns_of(name), lab.address_of(name))
            cilia = _cilia_scenarios(lab)
        applied = 0
        for size in sizes:
            if lab is not None:
                _grow_cilia(lab, applied, size, out)
                applied = size - 1
            with ExitStack() as stack:
                nodes = {}
                if "iptables" in only:
                    for backend in backends:
                        nodes[f"iptables-{backend}"] = stack.enter_context(
                            kube_proxy_node(size, BACKENDS_PER_FILLER, backend, prefix=f"cilia-bench-kp{backend}"))
                scenarios = cilia + [Scenario(name, node.client, node.cluster_ip) for name, node in nodes.items()]
                rounds = [measure_round(scenarios, seconds, index) for index in range(repeats)]
                for name, node in nodes.items():
                    setup = {**node.summary(), "dnat_hits": node.backend_hits()}
                    out["setup"].setdefault(name, {})[size] = setup
                    idle = [ip for ip, hits in setup["dnat_hits"].items() if not hits]
                    if idle:
                        raise BenchError(f"{name} at N={size}: no connection was DNATed to {', '.join(idle)}")
            out["rounds"][size] = rounds
            for name in rounds[0]:
                out["figures"].setdefault(name, {})[size] = median_figures([r[name] for r in rounds])
            print(f"N={size}: " + "; ".join(f"{name} {out['figures'][name][size]}" for name in rounds[0]), flush=True)
    finally:
        for server in servers:
            server.stop()
        if lab is not None:
            lab.down()


def cilia_control_plane(services: int, backends: int, changes: int = CHANGES) -> dict[str, Any]:
    """A fresh lab (no pods): `services` fillers with their slices applied from nothing, then one slice
    changed `changes` times (one apply call each, the client connection already open)."""
    cleanup_leftovers()
    lab = Lab.up(parse_topology({}), agent_args=CILIA_AGENT_ARGS)
    try:
        with AgentClient(NodePaths("n1").socket, timeout=APPLY_TIMEOUT) as api:
            objects = filler_objects(0, services, backends)
            full = apply_objects(api, objects)
            target = services // 2
            change_seconds = [apply_objects(api, [filler_slice(target, backends, changed=k + 1)])
                              for k in range(changes)]
        return {"services": services, "backends_per_service": backends, "objects": len(objects),
                "apply_calls": -(-len(objects) // APPLY_BATCH), "full_apply_seconds": round(full, 3),
                "change_apply_seconds": round(median(change_seconds), 4),
                "change_apply_seconds_each": [round(s, 4) for s in change_seconds]}
    finally:
        lab.down()


def control_planes(size: int, only: set[str], backends: list[str], restore_timeout: float,
                   out: dict[str, Any]) -> None:
    if "cilia" in only:
        out["control_plane"]["cilia"] = cilia_control_plane(size, BACKENDS_PER_FILLER)
        print(f"cilia control plane: {out['control_plane']['cilia']}", flush=True)
    if "iptables" in only:
        for backend in backends:
            out["control_plane"][f"iptables-{backend}"] = control_plane(size, BACKENDS_PER_FILLER, backend,
                                                                         CHANGES, restore_timeout)
            print(f"iptables-{backend} control plane: {out['control_plane'][f'iptables-{backend}']}", flush=True)


# ----- ratios and targets ------------------------------------------------------------------------------------
def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def _median_ratio(rounds: list[dict[str, ServiceFigures]], a: str, b: str, metric: str) -> float | None:
    values = [x for r in rounds if a in r and b in r
              if (x := _ratio(getattr(r[a], metric), getattr(r[b], metric))) is not None]
    return round(median(values), 3) if values else None


def compare(rounds: list[dict[str, ServiceFigures]], a: str, b: str) -> dict[str, float | None]:
    """a/b, the median of the per-round ratios (both measured in the same round)."""
    return {metric: _median_ratio(rounds, a, b, field_name) for metric, field_name in
            (("connections_per_s", "connections_per_s"), ("latency_avg", "latency_avg_us"),
             ("latency_p99", "latency_p99_us"))}


def ratios(out: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    rounds: dict[int, list[dict[str, ServiceFigures]]] = out["rounds"]
    figures: dict[str, dict[int, ServiceFigures]] = out["figures"]
    result: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    sizes = sorted(rounds)
    low, high = (sizes[0], sizes[-1]) if sizes else (0, 0)
    for name, table in figures.items():  # raw: each scenario at N against itself at the smallest N
        if low in table:
            result[f"{name} N/{low} (raw)"] = {
                f"{size}/{low}": {"connections_per_s": _ratio(f.connections_per_s, table[low].connections_per_s),
                                  "latency_avg": _ratio(f.latency_avg_us, table[low].latency_avg_us)}
                for size, f in table.items() if size != low}
    kube = [name for name in figures if name.startswith("iptables-")]
    for other in kube:
        for mine in ("cilia", "cilia-socket"):
            if mine in figures:
                result[f"{mine}/{other}"] = {str(size): compare(rounds[size], mine, other) for size in sizes}
        if "cilia" in figures:
            by_size = result[f"cilia/{other}"].values()
            targets[f"cilia ahead of {other} at every N (more connections/s, lower latency)"] = all(
                (r["connections_per_s"] or 0) > 1 and (r["latency_avg"] or 2) < 1 for r in by_size)
    if "cilia-direct" in figures and len(sizes) > 1:
        # the service path relative to pod-to-pod in the same round: the machine's drift cancels out
        for mine in ("cilia", "cilia-socket"):
            if mine not in figures:
                continue
            relative = {size: compare(rounds[size], mine, "cilia-direct") for size in sizes}
            result[f"{mine}/cilia-direct"] = {str(size): r for size, r in relative.items()}
            cps = _ratio(relative[high]["connections_per_s"] or 0, relative[low]["connections_per_s"] or 0)
            latency = _ratio(relative[high]["latency_avg"] or 0, relative[low]["latency_avg"] or 0)
            result[f"{mine} flatness N={high}/N={low} (relative to cilia-direct)"] = {
                "connections_per_s": cps, "latency_avg": latency}
            if mine == "cilia":
                targets[f"cilia flat from N={low} to N={high} (not worse by more than {FLAT_TARGET:.0%}, "
                        "relative to pod-to-pod in the same rounds)"] = {
                    "connections_per_s": cps is not None and cps >= 1 - FLAT_TARGET,
                    "latency_avg": latency is not None and latency <= 1 + FLAT_TARGET,
                }
    planes: dict[str, Any] = out["control_plane"]
    plane = planes.get("cilia")
    if plane:
        targets[f"one change under {CHANGE_TARGET_SECONDS * 1000:.0f} ms at {plane['services']}"] = (
            plane["change_apply_seconds"] < CHANGE_TARGET_SECONDS)
        targets[f"full programming of {plane['services']} x {plane['backends_per_service']} under "
                f"{PROGRAM_TARGET_SECONDS:.0f} s"] = plane["full_apply_seconds"] < PROGRAM_TARGET_SECONDS
        for name, other in planes.items():
            if name == "cilia" or not other or other.get("change_restore_seconds") is None:
                continue
            result[f"one change {name}/cilia"] = _ratio(other["change_restore_seconds"], plane["change_apply_seconds"])
            if other.get("initial_restore_seconds") is not None:
                result[f"full programming {name}/cilia"] = _ratio(other["initial_restore_seconds"],
                                                                  plane["full_apply_seconds"])
    return result, targets


# ----- main --------------------------------------------------------------------------------------------------
def run(sizes: tuple[int, ...], seconds: int, repeats: int, only: set[str], backends: list[str],
        restore_timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = {"figures": {}, "rounds": {}, "setup": {"cilia": {}}, "control_plane": {}, "error": None}
    try:
        _datapath(sizes, seconds, repeats, only, backends, out)
        control_planes(max(sizes), only, backends, restore_timeout, out)
    except Exception as exc:  # what was measured before the failure is kept and reported
        out["error"] = describe(exc)
        print(f"FAILED: {out['error']}", file=sys.stderr, flush=True)
    result, targets = ratios(out)
    namespace, name = MEASURED_SERVICE
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": seconds, "repeats": repeats, "sizes": list(sizes),
        "measured_service": {"name": f"{namespace}/{name}", "cluster_ip": MEASURED_CLUSTER_IP, "ports": PORTS,
                             "backends": 2},
        "fillers": {"backends_per_service": BACKENDS_PER_FILLER, "port": f"TCP {FILLER_PORT} -> {FILLER_TARGET_PORT}"},
        "figures": {scenario: {str(size): asdict(f) for size, f in table.items()}
                    for scenario, table in out["figures"].items()},
        "rounds": {str(size): [{scenario: asdict(f) for scenario, f in r.items()} for r in rs]
                   for size, rs in out["rounds"].items()},
        "setup": {scenario: {str(k): v for k, v in data.items()} for scenario, data in out["setup"].items()},
        "control_plane": out["control_plane"],
        "ratios": result,
        "targets": targets,
        "error": out["error"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="service scale: cilia's eBPF load balancer vs kube-proxy iptables")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 s runs, one repeat")
    parser.add_argument("--only", default="iptables,cilia", help="iptables, cilia or both (comma-separated)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="service counts, ascending; the largest is also the control-plane size")
    parser.add_argument("--iptables", default="legacy,nft", help="iptables backends for the kube-proxy half")
    parser.add_argument("--restore-timeout", type=float, default=120.0,
                        help="seconds any one control-plane iptables-restore may take (nft --noflush is slow)")
    args = parser.parse_args()
    seconds, repeats = (2, 1) if args.quick else (args.seconds, args.repeats)
    only = set(args.only.split(","))
    if not only or only - {"iptables", "cilia"}:
        parser.error("--only: iptables, cilia or both")
    backends = args.iptables.split(",")
    if not backends or set(backends) - set(BACKENDS):
        parser.error(f"--iptables: one or more of {', '.join(BACKENDS)}")
    try:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    except ValueError:
        parser.error("--sizes: comma-separated integers")
    if not sizes or sizes[0] < 1 or list(sizes) != sorted(set(sizes)):
        parser.error("--sizes must be distinct, ascending and at least 1")
    refuse_if_busy()
    results = run(sizes, seconds, repeats, only, backends, args.restore_timeout)
    write_results("services", results)
    if results["error"]:
        sys.exit(1)

if __name__ == "__main__":
    main()
