"""Adapter: endpoint records, node addresses and the cluster view into the datapath's maps, programs,
routes and devices, and the maps' decoded entries out (typed; `cilia.agent.api.maprows` renders them
for the API).

Cluster (`sync_cluster`): native routes to the other nodes' pod CIDRs, the VXLAN device in tunnel
mode, and the ipcache entries of remote endpoints and nodes; the plan is computed by
`cilia.datapath.cluster` and only what differs is written.

Netlink is reached through `cilia.netlink` only."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cilia.agent.config import AgentConfig, MonitorAggregation
from cilia.cluster.model import ClusterView, RoutingMode
from cilia.datapath import Datapath, DatapathOptions, EndpointConfig
from cilia.datapath.cluster import desired_ipcache_packed, desired_routes, packed_ipcache_diff
from cilia.endpoint.record import EndpointRecord
from cilia.identity.cidr import CIDR_IDENTITY_BASE, Network
from cilia.identity.reserved import ReservedIdentity
from cilia.ipam import Ipam
from cilia.maps import lb as lbm
from cilia.maps.ct import CtEntry, CtTuple
from cilia.maps.endpoints import EndpointInfo
from cilia.maps.ipcache import IpcacheValue, Prefix, unpack_key
from cilia.maps.lb import LbMaps
from cilia.maps.metrics import MetricsKey
from cilia.maps.policy import InstalledEntries
from cilia.netlink import NodeNetConfig, addresses, link_index
from cilia.netlink.node import ensure_service_snat
from cilia.netlink.routes import sync_pod_cidr_routes
from cilia.netlink.vxlan import VXLAN_DEVICE, VXLAN_OVERHEAD, ensure_vxlan_device
from cilia.policy.mapstate import MapState
from cilia.proxy import dnspolicy as dns_policy
from cilia.proxy import policy as proxy_policy

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
log = logging.getLogger(__name__)


def _addresses(record: EndpointRecord) -> list[IPAddress]:
    return [ipaddress.ip_address(a) for a in (record.ipv4, record.ipv6) if a]


@dataclass(frozen=True)
class LbEntries:
    """The service and backend maps, decoded: every slot of every frontend, backends by id."""

    services: dict[lbm.ServiceKey, lbm.ServiceValue]
    backends: dict[int, lbm.BackendValue]


class DatapathAdapter:
    def __init__(self, config: AgentConfig, ipam: Ipam) -> None:
        self._config = config
        self._ipam = ipam
        self.datapath = Datapath(
            config.paths.bpffs_dir,
            config.bpf_dir,
            DatapathOptions(
                ct_tcp_max=config.ct_tcp_max,
                ct_any_max=config.ct_any_max,
                aggregation=0 if config.monitor_aggregation is MonitorAggregation.NONE else 1,
                aggregation_interval=config.monitor_interval_seconds,
                lb_map_max=config.lb_map_max,
                maglev_size=config.maglev_table_size,
                maglev_seed=config.maglev_hash_seed,
                tunnel_port=config.tunnel_port if config.routing_mode is RoutingMode.TUNNEL else 0,
            ),
        )
        self._tunnel_ifindex = 0

    @property
    def tunnel(self) -> bool:
        return self._config.routing_mode is RoutingMode.TUNNEL

    @property
    def tunnel_ifindex(self) -> int:
        """cilia_vxlan's ifindex in tunnel mode (each endpoint's program redirects there), else 0."""
        return self._tunnel_ifindex

    @property
    def encap_overhead(self) -> int:
        """Bytes the routing mode adds to a pod's packet: the pod MTU is lowered by this much."""
        return VXLAN_OVERHEAD if self.tunnel else 0

    def open(self) -> None:
        self.datapath.open()
        if self.tunnel:
            # before any endpoint is attached: each one's program carries the device's ifindex
            self._tunnel_ifindex = ensure_vxlan_device(self._config.tunnel_port)

    def close(self) -> None:
        self.datapath.close()

    def sync_node_entries(self, node: NodeNetConfig) -> None:
        """World is the default route of the ipcache; the node's own addresses are `host`."""
        desired: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, int] = {
            ipaddress.ip_network("0.0.0.0/0"): int(ReservedIdentity.WORLD),
            ipaddress.ip_network("::/0"): int(ReservedIdentity.WORLD),
        }
        for router in (node.router_ipv4, node.router_ipv6):
            if router is not None:
                desired[ipaddress.ip_network(router)] = int(ReservedIdentity.HOST)
        for address in _local_addresses():
            desired[ipaddress.ip_network(address)] = int(ReservedIdentity.HOST)
        self.datapath.sync_prefixes(desired)

    def attach(self, record: EndpointRecord) -> None:
        options = self.datapath.options
        self.datapath.attach_endpoint(
            EndpointConfig(
                endpoint_id=record.id,
                identity=record.identity,
                lxc_ifindex=record.host_ifindex,
                lxc_mac=record.host_mac,
                pod_mac=record.mac,
                pod_ipv4=ipaddress.IPv4Address(record.ipv4) if record.ipv4 else None,
                pod_ipv6=ipaddress.IPv6Address(record.ipv6) if record.ipv6 else None,
                router_ipv4=self._ipam.router_ipv4 if record.ipv4 else None,
                router_ipv6=self._ipam.router_ipv6 if record.ipv6 else None,
                aggregation=options.aggregation,
                aggregation_interval=options.aggregation_interval,
                tunnel_ifindex=self._tunnel_ifindex,
            )
        )

    def detach(self, record: EndpointRecord) -> None:
        self.datapath.detach_endpoint(record.host_ifindex or None, _addresses(record))

    # ----- cluster (cilia.cluster.controller) ------------------------------------------------------
    def sync_cluster(self, view: ClusterView) -> int:
        """Make the node's datapath match the cluster: native routes to the other nodes' pod CIDRs
        (added, replaced, removed), the VXLAN device in tunnel mode, and the ipcache entries of
        remote endpoints (identity, tunnel endpoint) and other nodes (`remote-node`). Removes only
        ipcache entries an earlier sync wrote (flagged in the map, so this holds across restarts);
        a local pod's, the host's and CIDR identities' entries are never touched. Idempotent:
        returns the number of changes, 0 (nothing written) when nothing differed."""
        if view.routing_mode is not self._config.routing_mode:
            log.warning("cluster view in %s routing, this agent runs %s: following the agent's flag",
                        view.routing_mode, self._config.routing_mode)
            view = ClusterView(self._config.routing_mode, view.local_node, view.nodes, view.remote_endpoints)
        changes = 0
        if self.tunnel:
            index = ensure_vxlan_device(self._config.tunnel_port)
            if index != self._tunnel_ifindex:
                log.warning("%s was recreated (ifindex %d -> %d): endpoints attached before keep the old one "
                            "until they are re-attached", VXLAN_DEVICE, self._tunnel_ifindex, index)
                self._tunnel_ifindex = index
                self.datapath.attach_overlay(index)
                changes += 1
        changes += sync_pod_cidr_routes(desired_routes(view))
        ipcache = self.datapath.ipcache
        # packed keys and values throughout, the map walked not copied: at 10,000 remote endpoints
        # dicts of network objects cost the agent ~1 KiB per endpoint of heap high-water per sync
        diff = packed_ipcache_diff(ipcache.raw_items(), desired_ipcache_packed(view, self.direct_cidrs()))
        for key, value in diff.put.items():
            ipcache.put_raw(key, value)
        for key in diff.delete:
            ipcache.delete_raw(key)
        if diff.kept_foreign:
            log.debug("cluster sync left %d ipcache entries it did not write: %s", len(diff.kept_foreign),
                      ", ".join(str(unpack_key(key)) for key in diff.kept_foreign[:5]))
        return changes + len(diff.put) + len(diff.delete)

    def direct_cidrs(self) -> tuple[Network, ...]:
        """Where the node never masquerades pod traffic (the native-routing CIDRs, or everything
        with masquerade off): remote pods there are forwarded by the pods' programs themselves."""
        if not self._config.masquerade:
            return (ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("::/0"))
        return tuple(self._config.native_routing_cidrs)

    # ----- services --------------------------------------------------------------------------------
    @property
    def lb(self) -> LbMaps:
        return self.datapath.lb

    def attach_service_programs(self, underlay_device: str, cgroup_root: Path | None) -> None:
        """Per-packet LB for traffic from outside (the underlay device), socket LB for the node's cgroup."""
        ifindex = link_index(underlay_device)
        if ifindex is None:
            raise RuntimeError(f"underlay device {underlay_device!r} does not exist in this network namespace")
        self.datapath.attach_host(ifindex)
        if self.tunnel:
            self.datapath.attach_overlay(self._tunnel_ifindex)
        # NodePort/LoadBalancer/externalIP connections forwarded to a backend on another node
        # leave with the node's address, so the replies come back through this node
        devices = [underlay_device, *([VXLAN_DEVICE] if self.tunnel else [])]
        ensure_service_snat(devices, self.node_addresses())
        if cgroup_root is not None:
            self.datapath.attach_sock(cgroup_root)

    def node_addresses(self) -> list[IPAddress]:
        """The node's addresses on its underlay device: where NodePort frontends listen."""
        ifindex = link_index(self._config.underlay_device)
        if ifindex is None:
            return []
        return sorted((a for a in addresses(ifindex) if not a.is_link_local and not a.is_loopback), key=str)

    def lb_entries(self) -> LbEntries:
        """The service and backend maps as the datapath sees them."""
        snapshot = self.datapath.lb.snapshot((lbm.SERVICES_NAME, lbm.BACKENDS_NAME))
        return LbEntries(
            services={lbm.ServiceKey.unpack(k): lbm.ServiceValue.unpack(v)
                      for k, v in snapshot[lbm.SERVICES_NAME].items()},
            backends={lbm.unpack_id(k): lbm.BackendValue.unpack(v) for k, v in snapshot[lbm.BACKENDS_NAME].items()},
        )

    def is_attached(self, record: EndpointRecord) -> bool:
        return self.datapath.endpoint_attached(record.host_ifindex)

    def ct_gc(self) -> int:
        return self.datapath.ct_gc()

    # ----- policy (cilia.policy.engine.PolicyDatapath) ------------------------------------------------
    def install_policy(self, endpoint_id: int, state: MapState) -> bool:
        # the L7 proxy's rules go first: a REDIRECT entry never goes live before its rules exist
        proxy_dir = self._config.paths.proxy_policy_dir
        dns_dir = self._config.paths.dns_policy_dir
        if state.proxy:
            proxy_policy.write_policy(proxy_dir, endpoint_id, state.proxy)
        if state.dns:
            dns_policy.write_policy(dns_dir, endpoint_id, state.dns)
        changed = self.datapath.policy.install(endpoint_id, state)
        if not state.proxy:
            proxy_policy.remove_policy(proxy_dir, endpoint_id)
        if not state.dns:
            dns_policy.remove_policy(dns_dir, endpoint_id)
        return changed

    def fail_policy(self, endpoint_id: int) -> None:
        self.datapath.policy.fail(endpoint_id)

    def remove_policy(self, endpoint_id: int) -> None:
        self.datapath.policy.remove(endpoint_id)
        proxy_policy.remove_policy(self._config.paths.proxy_policy_dir, endpoint_id)
        dns_policy.remove_policy(self._config.paths.dns_policy_dir, endpoint_id)

    def policy_endpoints(self) -> set[int]:
        return set(self.datapath.policy.installed)

    def add_cidr_prefixes(self, prefixes: dict[Network, int]) -> None:
        """CIDR identities into the ipcache, never over a pod's or the node's own entry."""
        current = self.datapath.ipcache.entries()
        for prefix, identity in prefixes.items():
            existing = current.get(prefix)
            if existing is not None and existing.identity < CIDR_IDENTITY_BASE and prefix.prefixlen > 0:
                continue
            if existing is None or existing.identity != identity:
                self.datapath.ipcache.upsert(prefix, identity)

    def remove_cidr_prefixes(self, prefixes: Iterable[Network]) -> None:
        current = self.datapath.ipcache.entries()
        for prefix in prefixes:
            existing = current.get(prefix)
            if existing is not None and existing.identity >= CIDR_IDENTITY_BASE:
                self.datapath.ipcache.delete(prefix)

    def policy_entries(self, endpoint_id: int) -> InstalledEntries | None:
        return self.datapath.policy.dump(endpoint_id)

    def summary(self) -> dict[str, Any]:
        return {
            "pin_dir": str(self.datapath.pin_dir),
            "object": str(self.datapath.object_path),
            "ct_entries": len(self.datapath.ct.entries()),
            "ipcache_entries": len(self.datapath.ipcache.entries()),
            "policy_endpoints": len(self.datapath.policy.installed),
            "monitor_aggregation": self._config.monitor_aggregation.value,
        }

    def ct_entries(self) -> list[tuple[CtTuple, CtEntry]]:
        return self.datapath.ct.entries()

    def ipcache_entries(self) -> dict[Prefix, IpcacheValue]:
        return self.datapath.ipcache.entries()

    def endpoint_entries(self) -> dict[IPAddress, EndpointInfo]:
        return self.datapath.endpoints.entries()

    def metric_totals(self) -> dict[MetricsKey, tuple[int, int]]:
        return self.datapath.metrics.totals()


def _local_addresses() -> list[IPAddress]:
    """The node's own addresses (underlay and others) in this netns: traffic to them is `host`."""
    return [a for a in addresses() if not a.is_loopback and not a.is_link_local]
