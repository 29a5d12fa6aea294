"""Adapter: endpoint records and node addresses into the datapath's maps and programs."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cilia.agent.config import AgentConfig, MonitorAggregation
from cilia.datapath import Datapath, DatapathOptions, EndpointConfig
from cilia.endpoint.record import EndpointRecord
from cilia.identity.cidr import CIDR_IDENTITY_BASE, Network
from cilia.identity.reserved import ReservedIdentity
from cilia.ipam import Ipam
from cilia.maps import lb as lbm
from cilia.maps.ct import PROTOCOLS
from cilia.maps.lb import LbMaps
from cilia.maps.metrics import DIRECTIONS
from cilia.monitor.events import DROP_REASONS
from cilia.netlink import NodeNetConfig
from cilia.policy.mapstate import MapState

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _addresses(record: EndpointRecord) -> list[IPAddress]:
    return [ipaddress.ip_address(a) for a in (record.ipv4, record.ipv6) if a]


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
            ),
        )

    def open(self) -> None:
        self.datapath.open()

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
            )
        )

    def detach(self, record: EndpointRecord) -> None:
        self.datapath.detach_endpoint(record.host_ifindex or None, _addresses(record))

    # ----- services --------------------------------------------------------------------------------
    @property
    def lb(self) -> LbMaps:
        return self.datapath.lb

    def attach_service_programs(self, underlay_device: str, cgroup_root: Path | None) -> None:
        """Per-packet LB for traffic from outside (the underlay device), socket LB for the node's cgroup."""
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=underlay_device)
        if not found:
            raise RuntimeError(f"underlay device {underlay_device!r} does not exist in this network namespace")
        self.datapath.attach_host(int(found[0]))
        if cgroup_root is not None:
            self.datapath.attach_sock(cgroup_root)

    def node_addresses(self) -> list[IPAddress]:
        """The node's addresses on its underlay device: where NodePort frontends listen."""
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=self._config.underlay_device)
            if not found:
                return []
            addresses = [ipaddress.ip_address(str(a.get("address"))) for a in ipr.get_addr(index=found[0])]
        return sorted((a for a in addresses if not a.is_link_local and not a.is_loopback), key=str)

    def dump_lb(self) -> list[dict[str, Any]]:
        """The service map as the datapath sees it: each frontend with its slots and backends."""
        lb = self.datapath.lb
        snapshot = lb.snapshot((lbm.SERVICES_NAME, lbm.BACKENDS_NAME, lbm.REVNAT_NAME))
        backends = {lbm.unpack_id(k): lbm.BackendValue.unpack(v) for k, v in snapshot[lbm.BACKENDS_NAME].items()}
        services = {lbm.ServiceKey.unpack(k): lbm.ServiceValue.unpack(v)
                    for k, v in snapshot[lbm.SERVICES_NAME].items()}
        rows = []
        for key, value in sorted(services.items(), key=lambda kv: (str(kv[0].address), kv[0].port, kv[0].slot)):
            if key.slot:
                continue
            slots = []
            for slot in range(1, value.count + 1):
                slot_value = services.get(lbm.ServiceKey(key.address, key.port, key.protocol, slot))
                backend = backends.get(slot_value.backend_id) if slot_value else None
                slots.append({"slot": slot, "backend_id": slot_value.backend_id if slot_value else None,
                              "backend": _endpoint_str(backend.address, backend.port) if backend else None,
                              "state": lbm.BACKEND_STATE_NAMES.get(backend.state) if backend else None})
            rows.append({"frontend": _endpoint_str(key.address, key.port),
                         "protocol": PROTOCOLS.get(key.protocol, str(key.protocol)), "rev_nat_id": value.rev_nat_id,
                         "flags": [n for bit, n in ((lbm.SVC_F_EXTERNAL, "external"), (lbm.SVC_F_AFFINITY, "affinity"),
                                                    (lbm.SVC_F_MAGLEV, "maglev")) if value.flags & bit],
                         "affinity_timeout": value.affinity_timeout, "backends": slots})
        return rows

    def is_attached(self, record: EndpointRecord) -> bool:
        return self.datapath.endpoint_attached(record.host_ifindex)

    def ct_gc(self) -> int:
        return self.datapath.ct_gc()

    # ----- policy (cilia.agent.policy_manager.PolicyDatapath) ---------------------------------------
    def install_policy(self, endpoint_id: int, state: MapState) -> bool:
        return self.datapath.policy.install(endpoint_id, state)

    def fail_policy(self, endpoint_id: int) -> None:
        self.datapath.policy.fail(endpoint_id)

    def remove_policy(self, endpoint_id: int) -> None:
        self.datapath.policy.remove(endpoint_id)

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

    def dump_policy(self, endpoint_id: int) -> dict[str, Any]:
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

    def dump_ct(self) -> list[dict[str, Any]]:
        import time

        now = time.monotonic()
        rows = []
        for key, entry in self.datapath.ct.entries():
            rows.append({
                "proto": PROTOCOLS.get(key.protocol, str(key.protocol)),
                "source": _endpoint_str(key.source, key.source_port),
                "destination": _endpoint_str(key.destination, key.destination_port),
                "state": entry.state,
                "expires_in": max(0, int(entry.expires - now)),
                "tx_packets": entry.tx_packets,
                "tx_bytes": entry.tx_bytes,
                "rx_packets": entry.rx_packets,
                "rx_bytes": entry.rx_bytes,
                "src_identity": entry.src_identity,
            })
        return rows

    def dump_ipcache(self) -> list[dict[str, Any]]:
        return [
            {"prefix": str(prefix), "identity": value.identity, "tunnel_endpoint": value.tunnel_endpoint}
            for prefix, value in sorted(self.datapath.ipcache.entries().items(), key=lambda kv: str(kv[0]))
        ]

    def dump_endpoints(self) -> list[dict[str, Any]]:
        return [
            {"ip": str(address), "endpoint_id": info.endpoint_id, "ifindex": info.ifindex, "mac": info.mac,
             "lxc_mac": info.lxc_mac, "identity": info.identity}
            for address, info in self.datapath.endpoints.entries().items()
        ]

    def dump_metrics(self) -> list[dict[str, Any]]:
        return [
            {"endpoint_id": key.endpoint_id, "direction": DIRECTIONS.get(key.direction, str(key.direction)),
             "reason": "FORWARDED" if key.reason == 0 else DROP_REASONS.get(key.reason, (str(key.reason),))[0],
             "packets": packets, "bytes": nbytes}
            for key, (packets, nbytes) in sorted(self.datapath.metrics.totals().items(),
                                                 key=lambda kv: (kv[0].endpoint_id, kv[0].direction))
        ]


def _endpoint_str(address: IPAddress, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def _local_addresses() -> list[IPAddress]:
    """The node's own addresses (underlay and others) in this netns: traffic to them is `host`."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = [ipaddress.ip_address(str(a.get("address"))) for a in ipr.get_addr()]
    return [a for a in found if not a.is_loopback and not a.is_link_local]
