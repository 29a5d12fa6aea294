"""Datapath: owns the node's shared pinned maps, loads/attaches bpf_lxc.o per endpoint, bpf_host.o
on the node's underlay device, bpf_overlay.o on the node's VXLAN device (tunnel mode) and bpf_sock.o
on the node's cgroup.

Runs inside the node's network namespace (tc attach uses the caller's netns). Nothing here
detaches or unpins on close: the datapath must outlive the agent process.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cilia.bpf import EGRESS, INGRESS, BpfMap, BpfObject, ensure_bpffs, tc_attach, tc_detach, tc_query
from cilia.bpf.cgroup import CgroupHook, cgroup_attach
from cilia.datapath.config import EndpointConfig, HostConfig
from cilia.maps import calls, ct, endpoints, events, ipcache, metrics
from cilia.maps import lb as lb_maps
from cilia.maps import policy as policy_maps
from cilia.maps.endpoints import EndpointInfo, EndpointsMap
from cilia.maps.ipcache import IpcacheMap, Prefix

log = logging.getLogger(__name__)
LXC_OBJECT = "bpf_lxc.o"
HOST_OBJECT = "bpf_host.o"
SOCK_OBJECT = "bpf_sock.o"
OVERLAY_OBJECT = "bpf_overlay.o"
FROM_OVERLAY = "cil_from_overlay"
TO_OVERLAY = "cil_to_overlay"
FROM_CONTAINER = "cil_from_container"
TO_CONTAINER = "cil_to_container"
TO_CONTAINER_PEER = "cil_to_container_peer"  # tail-called by bpf_host / bpf_overlay (bpf/lib/deliver.h)
FROM_NETDEV = "cil_from_netdev"
TO_NETDEV = "cil_to_netdev"
SOCK_PROGRAMS = {
    "cil_sock4_connect": CgroupHook.INET4_CONNECT,
    "cil_sock6_connect": CgroupHook.INET6_CONNECT,
    "cil_sock4_sendmsg": CgroupHook.UDP4_SENDMSG,
    "cil_sock6_sendmsg": CgroupHook.UDP6_SENDMSG,
    "cil_sock4_recvmsg": CgroupHook.UDP4_RECVMSG,
    "cil_sock6_recvmsg": CgroupHook.UDP6_RECVMSG,
    "cil_sock4_getpeername": CgroupHook.INET4_GETPEERNAME,
    "cil_sock6_getpeername": CgroupHook.INET6_GETPEERNAME,
}
EVENTS_MAP = events.NAME
EVENTS_LOST_MAP = events.LOST_NAME


def default_bpf_dir() -> Path:
    """$CILIA_BPF_DIR, else the installed copy, else the repository's build output."""
    env = os.environ.get("CILIA_BPF_DIR")
    if env:
        return Path(env)
    installed = Path("/usr/local/lib/cilia/bpf")
    if (installed / LXC_OBJECT).is_file():
        return installed
    return Path(__file__).resolve().parents[3] / "build" / "bpf"


@dataclass(frozen=True)
class DatapathOptions:
    ct_tcp_max: int = 1 << 20
    ct_any_max: int = 1 << 18
    aggregation: int = 1
    aggregation_interval: int = 5
    lb_map_max: int = lb_maps.MAP_MAX
    maglev_size: int = lb_maps.DEFAULT_MAGLEV_SIZE
    maglev_seed: int = 0
    tunnel_port: int = 0  # tunnel mode: the VXLAN UDP port (bpf_host passes it early for known nodes)


class Datapath:
    def __init__(self, pin_dir: Path, bpf_dir: Path | None = None, options: DatapathOptions | None = None) -> None:
        self.pin_dir = pin_dir
        self.bpf_dir = bpf_dir or default_bpf_dir()
        self.options = options or DatapathOptions()
        self._maps: dict[str, BpfMap] = {}
        self._policy: policy_maps.PolicyMaps | None = None

    @property
    def object_path(self) -> Path:
        return self.bpf_dir / LXC_OBJECT

    def _open_object(self, name: str, rodata: dict[str, bytes] | None = None, stats: bool = False) -> BpfObject:
        """Every object shares the pinned maps, so each load asks for the same sizes."""
        sizes = {ct.TCP_NAME: self.options.ct_tcp_max, ct.ANY_NAME: self.options.ct_any_max}
        sizes.update(dict.fromkeys(lb_maps.SIZED_BY_MAP_MAX, self.options.lb_map_max))
        return BpfObject.open(
            self.bpf_dir / name,
            pin_root=self.pin_dir,
            rodata=rodata,
            max_entries=sizes,
            value_sizes={lb_maps.MAGLEV_NAME: 4 * self.options.maglev_size},
            stats=stats,
        )

    def _load(self, config: EndpointConfig) -> BpfObject:
        return self._open_object(LXC_OBJECT, {"CONFIG": config.pack()})

    def open(self) -> None:
        """Create or reuse the pinned maps. A first load with an empty config makes the pins."""
        ensure_bpffs()
        self.pin_dir.mkdir(parents=True, exist_ok=True)
        names = [ipcache.NAME, endpoints.NAME, calls.NAME, ct.TCP_NAME, ct.ANY_NAME, metrics.NAME, EVENTS_MAP,
                 EVENTS_LOST_MAP,
                 *policy_maps.NAMES, *lb_maps.NAMES]
        if not all((self.pin_dir / name).exists() for name in names):
            bootstrap = EndpointConfig(0, 0, 0, "00:00:00:00:00:00", "00:00:00:00:00:00", None, None, None, None)
            self._load(bootstrap).close()
        for name in names:
            self._maps[name] = BpfMap.from_pin(self.pin_dir / name)
        self._policy = policy_maps.PolicyMaps(*(self._maps[name] for name in policy_maps.NAMES))
        self._policy.scan()

    def close(self) -> None:
        for bpf_map in self._maps.values():
            bpf_map.close()
        self._maps.clear()
        self._policy = None

    def map(self, name: str) -> BpfMap:
        if name not in self._maps:
            raise RuntimeError(f"datapath maps are not open (wanted {name}): call open() first")
        return self._maps[name]

    @property
    def ipcache(self) -> IpcacheMap:
        return IpcacheMap(self.map(ipcache.NAME))

    @property
    def endpoints(self) -> EndpointsMap:
        return EndpointsMap(self.map(endpoints.NAME))

    @property
    def ingress_calls(self) -> calls.IngressCalls:
        return calls.IngressCalls(self.map(calls.NAME))

    @property
    def ct(self) -> ct.CtMap:
        return ct.CtMap(self.map(ct.TCP_NAME), self.map(ct.ANY_NAME))

    @property
    def metrics(self) -> metrics.MetricsMap:
        return metrics.MetricsMap(self.map(metrics.NAME))

    @property
    def policy(self) -> policy_maps.PolicyMaps:
        if self._policy is None:
            raise RuntimeError("datapath maps are not open: call open() first")
        return self._policy

    @property
    def lb(self) -> lb_maps.LbMaps:
        return lb_maps.LbMaps({name: self.map(name) for name in lb_maps.NAMES}, self.options.maglev_size)

    @property
    def events_map(self) -> BpfMap:
        return self.map(EVENTS_MAP)

    def events_lost(self) -> int:
        """Events the datapath dropped because the ring buffer was full (summed over CPUs)."""
        return events.lost_total(self.map(EVENTS_LOST_MAP).lookup(events.LOST_KEY) or b"")

    def attach_endpoint(self, config: EndpointConfig) -> None:
        """Load this endpoint's instance and attach it (atomic replace), then publish its addresses.

        The object is closed after attaching: tc holds the programs, the pins hold the maps, and the
        ingress-calls map the program the node's devices tail-call to deliver into this pod.
        """
        obj = self._load(config)
        try:
            tc_attach(config.lxc_ifindex, INGRESS, obj.program(FROM_CONTAINER))
            try:
                tc_attach(config.lxc_ifindex, EGRESS, obj.program(TO_CONTAINER))
                self.ingress_calls.set(config.endpoint_id, obj.program(TO_CONTAINER_PEER).fd)
            except BaseException:
                tc_detach(config.lxc_ifindex, INGRESS)
                tc_detach(config.lxc_ifindex, EGRESS)
                raise
        finally:
            obj.close()
        info = EndpointInfo(
            ifindex=config.lxc_ifindex,
            endpoint_id=config.endpoint_id,
            mac=config.pod_mac,
            lxc_mac=config.lxc_mac,
            identity=config.identity,
        )
        for address in (config.pod_ipv4, config.pod_ipv6):
            if address is not None:
                self.endpoints.upsert(address, info)
                self.ipcache.upsert(ipaddress.ip_network(address), config.identity)

    def detach_endpoint(
        self, lxc_ifindex: int | None, addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address]
    ) -> None:
        """Idempotent: forget the addresses and the endpoint's ingress call, detach if the link still exists."""
        for address in addresses:
            info = self.endpoints.lookup(address)
            if info is not None and (not lxc_ifindex or info.ifindex == lxc_ifindex):
                self.ingress_calls.clear(info.endpoint_id)
            self.endpoints.delete(address)
            self.ipcache.delete(ipaddress.ip_network(address))
        if lxc_ifindex:
            for direction in (INGRESS, EGRESS):
                try:
                    tc_detach(lxc_ifindex, direction)
                except Exception:  # the link may be gone already, which detaches everything
                    log.debug("detach from ifindex %d failed", lxc_ifindex, exc_info=True)

    def _node_rodata(self) -> dict[str, bytes]:
        """The node's programs are endpoint 0 (CONFIG), for their events and metrics."""
        return {"CONFIG": EndpointConfig.node(self.options.aggregation, self.options.aggregation_interval).pack()}

    def _host_rodata(self) -> dict[str, bytes]:
        host = HostConfig(self.options.maglev_size, self.options.maglev_seed, self.options.tunnel_port)
        return {"CONFIG": EndpointConfig.node(self.options.aggregation, self.options.aggregation_interval).pack(),
                "HOST": host.pack()}

    def verifier_cost(self, config: EndpointConfig) -> dict[str, int]:
        """Instructions the verifier processes for every program (bpf_lxc loaded with `config`), to
        keep an eye on its 1M limit and on load time, which grows with it. Loads, attaches nothing."""
        cost: dict[str, int] = {}
        for name, rodata in ((LXC_OBJECT, {"CONFIG": config.pack()}), (HOST_OBJECT, self._host_rodata()),
                             (OVERLAY_OBJECT, self._node_rodata()), (SOCK_OBJECT, None)):
            with self._open_object(name, rodata, stats=True) as obj:
                cost.update({program: obj.processed_instructions(program) for program in obj.verifier_stats})
        return cost

    def attach_host(self, ifindex: int) -> None:
        """bpf_host.o on the underlay device (atomic replace): ingress (service traffic from outside,
        delivery to local endpoints) and egress (replies of services forwarded to another node)."""
        with self._open_object(HOST_OBJECT, self._host_rodata()) as obj:
            tc_attach(ifindex, INGRESS, obj.program(FROM_NETDEV))
            tc_attach(ifindex, EGRESS, obj.program(TO_NETDEV))

    def attach_overlay(self, ifindex: int) -> None:
        """Tunnel mode: bpf_overlay.o on the VXLAN device (atomic replace): ingress (delivery to
        local endpoints) and egress (the L7 proxy's upstream leg: the client's identity in the VNI)."""
        with self._open_object(OVERLAY_OBJECT, self._node_rodata()) as obj:
            tc_attach(ifindex, INGRESS, obj.program(FROM_OVERLAY))
            tc_attach(ifindex, EGRESS, obj.program(TO_OVERLAY))

    def attach_sock(self, cgroup: Path) -> None:
        """Socket-level load balancing for every process in the node's cgroup subtree."""
        with self._open_object(SOCK_OBJECT) as obj:
            for program, hook in SOCK_PROGRAMS.items():
                cgroup_attach(cgroup, hook, obj.program(program))

    def endpoint_attached(self, lxc_ifindex: int) -> bool:
        return tc_query(lxc_ifindex, INGRESS) is not None and tc_query(lxc_ifindex, EGRESS) is not None

    def sync_prefixes(self, desired: dict[Prefix, int]) -> None:
        """Node-level ipcache entries (world, host); endpoint entries are managed per endpoint."""
        for prefix, identity in desired.items():
            self.ipcache.upsert(prefix, identity)

    def ct_gc(self) -> int:
        return self.ct.gc()
