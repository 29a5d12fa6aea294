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

Halves:
- iptables (bench/kubeproxy.py): kube-proxy is not installable here, so its iptables proxier's
  rules (v1.28 layout: KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-* with statistic/DNAT, the measured
  service in the middle of KUBE-SERVICES, the average position under kube-proxy's random order) are
  written and loaded into a node namespace the way kube-proxy loads them, with a client and two
  backend pods on veths. Once per iptables backend (--iptables): legacy and nft (kube-proxy's image
  carries both and uses the host's). A new connection walks KUBE-SERVICES in the nat table;
  established ones skip nat, so latency is expected flat and connections/s to fall with N.
- cilia: a lab (cilia.lab) with bench-client and two bench-server pods ({app: bench-server}); the
  fillers (Service + EndpointSlice each) are applied through the agent API in batches of 500
  objects, added as N grows; bench-svc selects the server pods.

Control plane, at the largest N (10,000 services x 10 endpoints by default), from nothing:
- cilia: wall clock of the apply calls for all services and slices; then one EndpointSlice changed
  (one endpoint replaced), one apply call, 3 times.
- iptables: kube_proxy.control_plane(): the first restore, one service changed the way kube-proxy
  syncs it (MinimizeIPTablesRestore), and a full resync.

Targets: cilia flat from the smallest N to the largest (connections/s and latency not worse by more
than 5%), cilia ahead of iptables at every N (more connections/s, lower latency), one change under
10 ms at 10,000, full programming under 30 s.

Printed and written to build/bench/services-<time>.json; exit status 1 if a half failed (what it
measured before failing is kept).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
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
    measure_service,
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


# ----- cilia ------------------------------------------------------------------------------------------------
def _cilia_datapath(sizes: tuple[int, ...], seconds: int, repeats: int, out: dict[str, Any]) -> None:
    cleanup_leftovers()
    lab = Lab.up(parse_topology({"pods": [{"name": "bench-client", "labels": {"app": "bench-client"}},
                                          *({"name": name, "labels": {"app": "bench-server"}} for name in SERVERS)]}),
                 agent_args=CILIA_AGENT_ARGS)
    servers: list[Server] = []
    try:
        client = lab.netns_of("bench-client")
        for name in SERVERS:
            servers += start_servers(lab.netns_of(name), lab.address_of(name))
        with AgentClient(NodePaths("n1").socket, timeout=APPLY_TIMEOUT) as api:
            out["apply_seconds"]["bench-svc"] = round(apply_objects(api, [measured_service()]), 3)
        applied = 0
        for size in sizes:  # ascending: the fillers of the previous size stay, the new ones are added
            with AgentClient(NodePaths("n1").socket, timeout=APPLY_TIMEOUT) as api:
                fillers = filler_objects(applied, size - 1, BACKENDS_PER_FILLER)
                out["apply_seconds"][size] = round(apply_objects(api, fillers), 3)
            applied = size - 1
            try:
                wait_reachable(client, MEASURED_CLUSTER_IP, PROBED_PORTS, REACHABLE_TIMEOUT)
            except KubeProxyError as exc:
                raise BenchError(f"at N={size} bench-svc ({MEASURED_CLUSTER_IP}) does not answer: {exc}") from exc
            # per-packet path: the client's tools run outside the node's cgroup (tc DNAT per packet)
            figures = measure_service(client, MEASURED_CLUSTER_IP, seconds, repeats)
            out["figures"][size] = figures
            # socket path: the same tools inside the client pod's cgroup (translated at connect())
            tools.CGROUPS[client] = str(lab.cgroup_of("bench-client"))
            try:
                out["socket_figures"][size] = measure_service(client, MEASURED_CLUSTER_IP, seconds, repeats)
            finally:
                tools.CGROUPS.pop(client, None)
            print(f"cilia N={size}: per-packet {figures}, socket {out['socket_figures'][size]} "
                  f"(fillers applied in {out['apply_seconds'][size]} s)", flush=True)
    finally:
        for server in servers:
            server.stop()
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


def run_cilia(sizes: tuple[int, ...], seconds: int, repeats: int) -> dict[str, Any]:
    """cilia's half: figures per size, apply times, control plane at the largest size. A failure is
    reported under 'error' with what was measured before it kept; labs are torn down whatever happens."""
    out: dict[str, Any] = {"figures": {}, "socket_figures": {}, "apply_seconds": {}, "control_plane": None,
                           "error": None}
    try:
        _cilia_datapath(sizes, seconds, repeats, out)
        out["control_plane"] = cilia_control_plane(max(sizes), BACKENDS_PER_FILLER)
        print(f"cilia control plane: {out['control_plane']}", flush=True)
    except Exception as exc:
        out["error"] = describe(exc)
        print(f"cilia: FAILED: {out['error']}", file=sys.stderr, flush=True)
    return out


# ----- iptables ----------------------------------------------------------------------------------------------
def run_iptables(sizes: tuple[int, ...], seconds: int, repeats: int, backend: str,
                 restore_timeout: float) -> dict[str, Any]:
    """kube-proxy's half for one iptables backend, same shape as run_cilia's result."""
    out: dict[str, Any] = {"figures": {}, "lab": {}, "control_plane": None, "error": None}
    try:
        for size in sizes:
            with kube_proxy_node(size, BACKENDS_PER_FILLER, backend) as lab:
                figures = measure_service(lab.client, lab.cluster_ip, seconds, repeats)
                out["lab"][size] = {**lab.summary(), "dnat_hits": lab.backend_hits()}
            idle = [ip for ip, hits in out["lab"][size]["dnat_hits"].items() if not hits]
            if idle:
                raise BenchError(f"at N={size} no connection was DNATed to {', '.join(idle)}: not load-balanced")
            out["figures"][size] = figures
            print(f"iptables-{backend} N={size}: {figures} (restore {out['lab'][size]['restore_seconds']} s, "
                  f"DNAT hits {out['lab'][size]['dnat_hits']})", flush=True)
        out["control_plane"] = control_plane(max(sizes), BACKENDS_PER_FILLER, backend, CHANGES, restore_timeout)
        print(f"iptables-{backend} control plane: {out['control_plane']}", flush=True)
    except Exception as exc:
        out["error"] = describe(exc)
        print(f"iptables-{backend}: FAILED: {out['error']}", file=sys.stderr, flush=True)
    return out


# ----- ratios and targets ------------------------------------------------------------------------------------
def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def compare(a: ServiceFigures, b: ServiceFigures) -> dict[str, float | None]:
    return {"connections_per_s": _ratio(a.connections_per_s, b.connections_per_s),
            "latency_avg": _ratio(a.latency_avg_us, b.latency_avg_us),
            "latency_p99": _ratio(a.latency_p99_us, b.latency_p99_us)}


def ratios(halves: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    result: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    for name, half in halves.items():
        table: dict[int, ServiceFigures] = half["figures"]
        if len(table) > 1:
            base = min(table)
            result[f"{name} N/{base}"] = {f"{size}/{base}": compare(f, table[base])
                                          for size, f in table.items() if size != base}
    cilia: dict[int, ServiceFigures] = halves.get("cilia", {}).get("figures", {})
    for name, half in halves.items():
        if name.startswith("cilia") or not cilia:
            continue
        common = [size for size in cilia if size in half["figures"]]
        result[f"cilia/{name}"] = {str(size): compare(cilia[size], half["figures"][size]) for size in common}
        if common:
            targets[f"cilia ahead of {name} at every N (more connections/s, lower latency)"] = all(
                cilia[s].connections_per_s > half["figures"][s].connections_per_s
                and cilia[s].latency_avg_us < half["figures"][s].latency_avg_us for s in common)
    if len(cilia) > 1:
        low, high = min(cilia), max(cilia)
        at = compare(cilia[high], cilia[low])
        cps, latency = at["connections_per_s"], at["latency_avg"]
        targets[f"cilia flat from N={low} to N={high} (not worse by more than {FLAT_TARGET:.0%})"] = {
            "connections_per_s": cps is not None and cps >= 1 - FLAT_TARGET,
            "latency_avg": latency is not None and latency <= 1 + FLAT_TARGET,
        }
    plane = halves.get("cilia", {}).get("control_plane")
    if plane:
        targets[f"one change under {CHANGE_TARGET_SECONDS * 1000:.0f} ms at {plane['services']}"] = (
            plane["change_apply_seconds"] < CHANGE_TARGET_SECONDS)
        targets[f"full programming of {plane['services']} x {plane['backends_per_service']} under "
                f"{PROGRAM_TARGET_SECONDS:.0f} s"] = plane["full_apply_seconds"] < PROGRAM_TARGET_SECONDS
        for name, half in halves.items():
            other = half.get("control_plane")
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
    halves: dict[str, dict[str, Any]] = {}
    if "iptables" in only:
        for backend in backends:
            halves[f"iptables-{backend}"] = run_iptables(sizes, seconds, repeats, backend, restore_timeout)
    if "cilia" in only:
        # "cilia" is the per-packet path (like kube-proxy, every packet through the datapath);
        # "cilia-socket" the same service with the client's tools in the pod's cgroup (socket LB)
        halves["cilia"] = run_cilia(sizes, seconds, repeats)
        halves["cilia-socket"] = {"figures": halves["cilia"].pop("socket_figures"), "control_plane": None,
                                  "error": None}
    result, targets = ratios(halves)
    namespace, name = MEASURED_SERVICE
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": seconds, "repeats": repeats, "sizes": list(sizes),
        "measured_service": {"name": f"{namespace}/{name}", "cluster_ip": MEASURED_CLUSTER_IP, "ports": PORTS,
                             "backends": 2},
        "fillers": {"backends_per_service": BACKENDS_PER_FILLER, "port": f"TCP {FILLER_PORT} -> {FILLER_TARGET_PORT}"},
        "figures": {half: {str(size): asdict(f) for size, f in data["figures"].items()}
                    for half, data in halves.items()},
        "setup": {half: {str(k): v for k, v in data.get("lab", data.get("apply_seconds", {})).items()}
                  for half, data in halves.items()},
        "control_plane": {half: data["control_plane"] for half, data in halves.items()},
        "ratios": result,
        "targets": targets,
        "errors": {half: data["error"] for half, data in halves.items() if data["error"]},
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

if __name__ == "__main__":
    main()
