"""A node's worth of service datapath for BPF_PROG_RUN: two endpoints' bpf_lxc instances (client
POD, backend PEER) and bpf_host, sharing one set of pins, with services written the way the agent
writes them. Used by tests/kernel/test_lb_packets.py and bench/lb_cost.py; the packets to run
through it come from cilia.testing.packets."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cilia.bpf import BpfObject
from cilia.datapath import EndpointConfig, default_bpf_dir
from cilia.datapath.config import HostConfig
from cilia.maps import lb as lbm
from cilia.maps.endpoints import EndpointInfo, EndpointsMap
from cilia.maps.policy import PolicyMaps
from cilia.policy.mapstate import DirectionState, MapState
from cilia.testing.packets import (
    LXC_MAC,
    PEER,
    PEER6,
    PEER_LXC_MAC,
    PEER_MAC,
    POD,
    POD6,
    POD_MAC,
    ROUTER,
    ROUTER6,
)

VIP, VIP6, EMPTY_VIP = "10.96.0.10", "fd00:96::10", "10.96.0.12"
NODE, CLIENT = "192.0.2.11", "198.51.100.10"
MAGLEV_M = 251


def endpoint_config(endpoint_id: int, pod: str, pod6: str, pod_mac: str, lxc_mac: str) -> EndpointConfig:
    return EndpointConfig(
        endpoint_id=endpoint_id, identity=255 + endpoint_id, lxc_ifindex=2 + 2 * endpoint_id, lxc_mac=lxc_mac,
        pod_mac=pod_mac, pod_ipv4=ipaddress.IPv4Address(pod), pod_ipv6=ipaddress.IPv6Address(pod6),
        router_ipv4=ipaddress.IPv4Address(ROUTER), router_ipv6=ipaddress.IPv6Address(ROUTER6),
        aggregation=0)


class Node:
    """Two endpoints' program instances (client POD, backend PEER) and the node's device program,
    sharing one set of pinned maps, with services written the way the agent writes them."""

    def __init__(self, pins: Path, lb_map_max: int = lbm.MAP_MAX) -> None:
        sizes = {"cilia_ct_tcp_v1": 4096, "cilia_ct_any_v1": 4096,
                 **dict.fromkeys(lbm.SIZED_BY_MAP_MAX, lb_map_max)}
        values = {lbm.MAGLEV_NAME: 4 * MAGLEV_M}
        bpf = default_bpf_dir()
        self.client = BpfObject.open(bpf / "bpf_lxc.o", pin_root=pins, max_entries=sizes, value_sizes=values,
                                     rodata={"CONFIG": endpoint_config(1, POD, POD6, POD_MAC, LXC_MAC).pack()})
        self.backend = BpfObject.open(bpf / "bpf_lxc.o", pin_root=pins, max_entries=sizes, value_sizes=values,
                                      rodata={"CONFIG": endpoint_config(2, PEER, PEER6, PEER_MAC,
                                                                        PEER_LXC_MAC).pack()})
        self.host = BpfObject.open(bpf / "bpf_host.o", pin_root=pins, max_entries=sizes, value_sizes=values,
                                   rodata={"CONFIG": EndpointConfig.node(0, 5).pack(),
                                           "HOST": HostConfig(MAGLEV_M).pack()})
        self.lb = lbm.LbMaps({name: self.client.map(name) for name in lbm.NAMES}, MAGLEV_M)
        policy = PolicyMaps(*(self.client.map(n) for n in ("cilia_policy_state_v1", "cilia_policy_sel_v1",
                                                            "cilia_policy_v1")))
        endpoints = EndpointsMap(self.client.map("cilia_endpoints_v1"))
        for endpoint_id, (v4, v6, pod_mac, lxc_mac) in {1: (POD, POD6, POD_MAC, LXC_MAC),
                                                         2: (PEER, PEER6, PEER_MAC, PEER_LXC_MAC)}.items():
            policy.install(endpoint_id, MapState(DirectionState(), DirectionState()))
            info = EndpointInfo(ifindex=2 + 2 * endpoint_id + 1, endpoint_id=endpoint_id, mac=pod_mac,
                                lxc_mac=lxc_mac, identity=255 + endpoint_id)
            endpoints.upsert(ipaddress.IPv4Address(v4), info)
            endpoints.upsert(ipaddress.IPv6Address(v6), info)

    def service(self, vip: str, port: int, rev_nat_id: int, backends: list[tuple[int, str, int]],
                flags: int = 0) -> None:
        write_service(self.lb, vip, port, rev_nat_id, backends, flags)

    def close(self) -> None:
        for obj in (self.client, self.backend, self.host):
            obj.close()


def write_service(lb: lbm.LbMaps, vip: str, port: int, rev_nat_id: int, backends: list[tuple[int, str, int]],
                  flags: int = 0, protocol: int = 6) -> None:
    """A frontend (TCP unless `protocol` says otherwise) and its backends (id, address, port) in the LB
    maps, as the agent writes them."""
    address = ipaddress.ip_address(vip)
    upserts: dict[str, dict[bytes, bytes]] = {lbm.BACKENDS_NAME: {}, lbm.SERVICES_NAME: {}, lbm.REVNAT_NAME: {}}
    for slot, (backend_id, ip, backend_port) in enumerate(backends, start=1):
        upserts[lbm.BACKENDS_NAME][lbm.pack_id(backend_id)] = lbm.BackendValue(
            ipaddress.ip_address(ip), backend_port, protocol).pack()
        upserts[lbm.SERVICES_NAME][lbm.ServiceKey(address, port, protocol, slot).pack()] = lbm.ServiceValue(
            backend_id=backend_id).pack()
    upserts[lbm.SERVICES_NAME][lbm.ServiceKey(address, port, protocol).pack()] = lbm.ServiceValue(
        count=len(backends), rev_nat_id=rev_nat_id, flags=flags).pack()
    upserts[lbm.REVNAT_NAME][lbm.pack_id(rev_nat_id)] = lbm.RevNatValue(address, port).pack()
    lb.apply(upserts, {})
