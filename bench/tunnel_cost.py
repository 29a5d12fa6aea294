"""`python -m bench.tunnel_cost`: the tunnel path's BPF programs, ns per packet, by BPF_PROG_RUN.

The real objects on real packets (no devices, no scheduler, no other process in the way), so a
change's effect on one program shows without the noise of the two-node lab on a shared 2-core
machine (bench.crossnode measures the whole path against plain Linux VXLAN; bench.crossnode_profile
each program's average in that lab). Measured, each the fastest of BATCHES batches of REPEAT runs:

- `host_outer`: bpf_host's cil_from_netdev on the tunnel's outer packet from a known node (IPv4
  UDP to the tunnel port) for the node itself: as the agent loads it in tunnel mode
  (`HOST.tunnel_port` set: the checks of lib/underlay.h, then untouched for cilia_vxlan), and
  without the port (`host_outer_full`: the full path, parse + service and endpoint lookups, which
  passed the packet too);
- `host_decap_v4` / `_v6`: the same program on a known node's packet for a local endpoint on an
  established connection: decapsulated in BPF, delivered, and tail-called into the endpoint's
  cil_to_container_peer (conntrack, ingress policy), as in the lab: what cil_from_overlay plus that
  program cost there, and the kernel's VXLAN receive before them;
- `lxc_encap_v4` / `_v6`: a pod's cil_from_container on an established connection's packet to a
  pod on another node (tunnel mode: conntrack, ipcache, egress policy, tunnel key, redirect);
- `to_container_v4` / `_v6`: the destination's cil_to_container on an established packet carrying
  the overlay's identity mark (as bpf_overlay hands it over: conntrack, ingress policy).

bpf_overlay's cil_from_overlay needs a tunnel key, which BPF_PROG_RUN cannot give it. Except for
the decapsulation, no program changes the packet on these paths, so each batch is one BPF_PROG_RUN
with `repeat`; every batch's verdict is checked, and the fastest batch is the figure (other
processes only add time). BPF_PROG_RUN runs its repeats on one skb, which the decapsulation
shrinks, so `host_decap_*` is the fastest of SINGLE_RUNS runs of one packet each.
`CILIA_BPF_DIR` selects the objects (e.g. an older build to compare).
"""

from __future__ import annotations

import argparse
import ipaddress
import struct
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.tools import write_results
from cilia.bpf import BpfObject, BpfProgram, ensure_bpffs, remove_pins
from cilia.datapath import default_bpf_dir
from cilia.datapath.config import EndpointConfig, HostConfig
from cilia.datapath.manager import TO_CONTAINER_PEER
from cilia.maps import calls
from cilia.maps import lb as lbm
from cilia.maps.calls import IngressCalls
from cilia.maps.ipcache import IpcacheMap, IpcacheValue
from cilia.testing.lbnode import MAGLEV_M, NODE, Node, endpoint_config
from cilia.testing.packets import LXC_MAC, PEER, PEER6, POD, POD6, POD_MAC, TC_ACT_REDIRECT, tcp_packet, vxlan_frame

REMOTE_POD, REMOTE_POD6 = "10.200.2.5", "fd00:200:2::5"
REMOTE_IDENTITY = 300
REMOTE_NODE = ipaddress.IPv4Address("192.0.2.12")
NODE_MACS = ("02:00:00:00:0a:01", "02:00:00:00:0a:02")
INNER_MACS = ("02:00:00:00:0b:01", "02:00:00:00:0b:02")  # the sending node's gateway MAC, its pod's
TUNNEL_PORT = 8472
TUNNEL_IFINDEX = 99
IDENTITY_MARK_MAGIC = 0xC1000000  # bpf/lib/overlay.h
REPEAT = 2_000
BATCHES = 15
SINGLE_RUNS = 2_000
VNI = 301  # the source pod's identity the sender put in the VNI
SIZES = {"cilia_ct_tcp_v1": 4096, "cilia_ct_any_v1": 4096, **dict.fromkeys(lbm.SIZED_BY_MAP_MAX, lbm.MAP_MAX)}
VALUES = {lbm.MAGLEV_NAME: 4 * MAGLEV_M}


def ns_per_packet(program: BpfProgram, packet: bytes, verdict: int, ctx: bytes | None = None) -> float:
    """The fastest batch's ns per run: on a shared machine the other processes only ever add time."""
    batches = []
    for _ in range(BATCHES):
        result = program.test_run(packet, ctx=ctx, repeat=REPEAT)
        if result.retval != verdict:
            raise RuntimeError(f"{program} gave verdict {result.retval}, not {verdict}: not the measured path")
        batches.append(result.duration_ns)
    return float(min(batches))


def ns_per_single_run(program: BpfProgram, packet: bytes, verdict: int) -> float:
    """The fastest of SINGLE_RUNS one-packet runs: for a program that changes its packet."""
    runs = []
    for _ in range(SINGLE_RUNS):
        result = program.test_run(packet)
        if result.retval != verdict:
            raise RuntimeError(f"{program} gave verdict {result.retval}, not {verdict}: not the measured path")
        runs.append(result.duration_ns)
    return float(min(runs))


def overlay_mark_ctx(identity: int) -> bytes:
    """A struct __sk_buff for BPF_PROG_RUN with only the mark set (len, pkt_type, mark, ...)."""
    return struct.pack("<III", 0, 0, IDENTITY_MARK_MAGIC | identity) + bytes(192 - 12)


@contextmanager
def tunnel_node() -> Iterator[tuple[Node, dict[str, BpfObject]]]:
    ensure_bpffs()
    pins = Path(f"/sys/fs/bpf/cilia-bench-{uuid.uuid4().hex[:8]}")
    node = Node(pins)
    objects: dict[str, BpfObject] = {}
    try:
        ipcache = IpcacheMap(node.client.map("cilia_ipcache_v1"))
        for address in (REMOTE_POD, REMOTE_POD6):
            ipcache.put(ipaddress.ip_network(address), IpcacheValue.remote(REMOTE_IDENTITY, REMOTE_NODE))
        ipcache.put(ipaddress.ip_network(REMOTE_NODE), IpcacheValue.remote(6, None))  # remote-node
        ipcache.put(ipaddress.ip_network(NODE), IpcacheValue.remote(1, None))  # the node's own address: host
        IngressCalls(node.host.map(calls.NAME)).set(2, node.backend.program(TO_CONTAINER_PEER).fd)
        bpf = default_bpf_dir()
        base = endpoint_config(1, POD, POD6, POD_MAC, LXC_MAC)
        config = EndpointConfig(**{**base.__dict__, "tunnel_ifindex": TUNNEL_IFINDEX})
        objects["lxc"] = BpfObject.open(bpf / "bpf_lxc.o", pin_root=pins, rodata={"CONFIG": config.pack()},
                                        max_entries=SIZES, value_sizes=VALUES)
        objects["host"] = BpfObject.open(bpf / "bpf_host.o", pin_root=pins, max_entries=SIZES, value_sizes=VALUES,
                                         rodata={"CONFIG": EndpointConfig.node(0, 5).pack(),
                                                 "HOST": HostConfig(MAGLEV_M, tunnel_port=TUNNEL_PORT).pack()})
        yield node, objects
    finally:
        for obj in objects.values():
            obj.close()
        node.close()
        remove_pins(pins)


def measure() -> dict[str, float]:
    out: dict[str, float] = {}
    with tunnel_node() as (node, objects):
        host = objects["host"].program("cil_from_netdev")
        inner = tcp_packet(REMOTE_POD, NODE, 40000, 8080, flags=0x10, eth=INNER_MACS)
        outer = vxlan_frame(str(REMOTE_NODE), NODE, TUNNEL_PORT, REMOTE_IDENTITY, inner, eth=NODE_MACS)
        out["host_outer"] = ns_per_packet(host, outer, 0)
        out["host_outer_full"] = ns_per_packet(node.host.program("cil_from_netdev"), outer, 0)
        for suffix, remote, peer in (("v4", REMOTE_POD, PEER), ("v6", REMOTE_POD6, PEER6)):
            def tunnelled(flags: int, remote: str = remote, peer: str = peer) -> bytes:
                inner = tcp_packet(remote, peer, 40002, 8080, flags=flags, eth=INNER_MACS)
                return vxlan_frame(str(REMOTE_NODE), NODE, TUNNEL_PORT, VNI, inner, eth=NODE_MACS)
            if host.test_run(tunnelled(0x02)).retval != TC_ACT_REDIRECT:  # the SYN creates the connection
                continue  # objects from before the decapsulation in bpf_host: they pass it to the device
            out[f"host_decap_{suffix}"] = ns_per_single_run(host, tunnelled(0x10), TC_ACT_REDIRECT)
        encap = objects["lxc"].program("cil_from_container")
        to_container = node.backend.program("cil_to_container")
        mark = overlay_mark_ctx(REMOTE_IDENTITY)
        for suffix, client, remote, peer in (("v4", POD, REMOTE_POD, PEER), ("v6", POD6, REMOTE_POD6, PEER6)):
            encap.test_run(tcp_packet(client, remote, 40000, 8080))  # the SYN creates the connection
            out[f"lxc_encap_{suffix}"] = ns_per_packet(encap, tcp_packet(client, remote, 40000, 8080, flags=0x10),
                                                       TC_ACT_REDIRECT)
            to_container.test_run(tcp_packet(remote, peer, 40001, 8080), ctx=mark)
            out[f"to_container_{suffix}"] = ns_per_packet(
                to_container, tcp_packet(remote, peer, 40001, 8080, flags=0x10), 0, ctx=mark)
    return {name: round(value, 1) for name, value in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description="ns per packet of the tunnel path's programs (BPF_PROG_RUN)")
    parser.add_argument("--label", default="", help="a name for the objects measured (e.g. the commit)")
    args = parser.parse_args()
    figures = measure()
    print(figures, flush=True)
    write_results("tunnel-cost", {"date": time.strftime("%Y-%m-%d %H:%M"), "label": args.label,
                                  "bpf_dir": str(default_bpf_dir()), "repeat": REPEAT, "batches": BATCHES,
                                  "figures": figures})


if __name__ == "__main__":
    main()
