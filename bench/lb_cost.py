"""`python -m bench.lb_cost`: the service datapath's cost per packet, with 10 / 1,000 / 10,000 services.

The real bpf_lxc.o program, run by BPF_PROG_RUN on real packets (no devices, no scheduler, no
other process in the way), so the figure is the program's own cost and the noise of a 2-core
machine does not hide a trend. For each size the service maps hold that many ClusterIP services of
10 backends each (written the way the agent writes them); measured, median of 7 batches of
5,000 single runs each:

- `service packet`: an established connection's packet to the measured ClusterIP (the per-packet
  path: service lookup, the connection's backend, DNAT, conntrack, policy, redirect);
- `pod packet`: an established packet straight to the backend pod (no service), the baseline in
  the same run.

Reports ns per packet and the ratio of each size to the smallest (target: flat).

Each run gets the packet afresh (BPF_PROG_RUN `repeat` would feed the program its own output: the
service packet would be DNATed to a pod packet after the first run, and the TTL the program
decrements would reach the drop path after 63), and every run's verdict is checked: a figure
that measured a drop is refused.
"""

from __future__ import annotations

import argparse
import ipaddress
import time
import uuid
from pathlib import Path
from statistics import median
from typing import Any

from bench.tools import write_results
from cilia.bpf import ensure_bpffs, remove_pins
from cilia.maps import lb as lbm
from cilia.testing.lbnode import VIP, Node
from cilia.testing.packets import PEER, POD, TC_ACT_REDIRECT, tcp_packet

SIZES = (10, 1000, 10000)
BACKENDS = 10
RUNS = 5_000  # single runs per batch
BATCHES = 7


def fill(node: Node, services: int) -> None:
    """`services` - 1 filler ClusterIPs (10.97.0.0/16) with BACKENDS backends each, plus the measured VIP."""
    upserts: dict[str, dict[bytes, bytes]] = {lbm.BACKENDS_NAME: {}, lbm.SERVICES_NAME: {}, lbm.REVNAT_NAME: {}}
    backend_id = 100
    for index in range(services - 1):
        address = ipaddress.IPv4Address("10.97.0.0") + index + 1
        rev_nat_id = 100 + index
        for slot in range(1, BACKENDS + 1):
            backend_id += 1
            upserts[lbm.BACKENDS_NAME][lbm.pack_id(backend_id)] = lbm.BackendValue(
                ipaddress.IPv4Address("10.150.0.0") + backend_id, 8080, 6).pack()
            upserts[lbm.SERVICES_NAME][lbm.ServiceKey(address, 80, 6, slot).pack()] = lbm.ServiceValue(
                backend_id=backend_id).pack()
        upserts[lbm.SERVICES_NAME][lbm.ServiceKey(address, 80, 6).pack()] = lbm.ServiceValue(
            count=BACKENDS, rev_nat_id=rev_nat_id).pack()
        upserts[lbm.REVNAT_NAME][lbm.pack_id(rev_nat_id)] = lbm.RevNatValue(address, 80).pack()
    node.lb.apply(upserts, {})
    node.service(VIP, 80, 1, [(1, PEER, 8080)])


def ns_per_packet(node: Node, packet: bytes) -> float:
    program = node.client.program("cil_from_container")
    program.test_run(packet)  # the first one sets the connection up; the rest are established
    batches = []
    for _ in range(BATCHES):
        durations = []
        for _ in range(RUNS):
            result = program.test_run(packet)
            if result.retval != TC_ACT_REDIRECT:
                raise RuntimeError(f"an established packet was not redirected to its pod (verdict {result.retval})")
            durations.append(result.duration_ns)
        batches.append(median(durations))
    return median(batches)


def measure(services: int) -> dict[str, float]:
    ensure_bpffs()
    pins = Path(f"/sys/fs/bpf/cilia-bench-{uuid.uuid4().hex[:8]}")
    node = Node(pins, lb_map_max=262144)
    try:
        fill(node, services)
        syn = tcp_packet(POD, VIP, 40000, 80)
        node.client.program("cil_from_container").test_run(syn)
        service = ns_per_packet(node, tcp_packet(POD, VIP, 40000, 80, flags=0x18))
        pod = ns_per_packet(node, tcp_packet(POD, PEER, 40001, 8080, flags=0x18))
        return {"service_packet_ns": round(service, 1), "pod_packet_ns": round(pod, 1)}
    finally:
        node.close()
        remove_pins(pins)


def main() -> None:
    parser = argparse.ArgumentParser(description="service datapath cost per packet vs number of services")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    figures: dict[int, dict[str, float]] = {}
    for size in sizes:
        figures[size] = measure(size)
        print(f"N={size}: {figures[size]}", flush=True)
    base = figures[min(figures)]
    ratios: dict[str, Any] = {f"{size}/{min(figures)}": {
        "service_packet": round(f["service_packet_ns"] / base["service_packet_ns"], 3),
        "pod_packet": round(f["pod_packet_ns"] / base["pod_packet_ns"], 3)} for size, f in figures.items()}
    write_results("lb-cost", {"date": time.strftime("%Y-%m-%d %H:%M"), "runs": RUNS, "batches": BATCHES,
                              "backends_per_service": BACKENDS,
                              "figures": {str(k): v for k, v in figures.items()}, "ratios": ratios})


if __name__ == "__main__":
    main()
