"""The load-time configurations patched into .rodata before a load: EndpointConfig mirrors
`struct ep_config` (bpf/lib/config.h, the `CONFIG` of every object), HostConfig `struct host_config`
(bpf/lib/host_config.h, `HOST`). The loader refuses a size mismatch; the contract test checks
every field's offset against the objects' BTF."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cilia.maps.addr import mac_bytes
from cilia.maps.layout import CStruct

EP_CONFIG = CStruct("ep_config", ("endpoint_id", "I"), ("identity", "I"), ("lxc_ifindex", "I"), ("flags", "I"),
                    ("lxc_mac", "6s"), ("pod_mac", "6s"), ("pod_ipv4", "4s"), ("pod_ipv6", "16s"),
                    ("router_ipv4", "4s"), ("router_ipv6", "16s"), ("aggregation", "I"),
                    ("aggregation_interval", "I"), ("tunnel_ifindex", "I"))
HOST_CONFIG = CStruct("host_config", ("maglev_size", "I"), ("maglev_seed", "I"), ("tunnel_port", "I"),
                      ("pad", "4x"))
RODATA = {"CONFIG": EP_CONFIG, "HOST": HOST_CONFIG}  # .rodata variable -> the struct it holds
_LAYOUT = EP_CONFIG.codec
FLAG_HAS_IPV4 = 1 << 0  # C: enum ep_flags
FLAG_HAS_IPV6 = 1 << 1
AGGREGATION_LEVELS = {"none": 0, "medium": 1}  # C: enum aggregation


@dataclass(frozen=True)
class EndpointConfig:
    endpoint_id: int
    identity: int
    lxc_ifindex: int
    lxc_mac: str
    pod_mac: str
    pod_ipv4: ipaddress.IPv4Address | None
    pod_ipv6: ipaddress.IPv6Address | None
    router_ipv4: ipaddress.IPv4Address | None
    router_ipv6: ipaddress.IPv6Address | None
    aggregation: int = 1
    aggregation_interval: int = 5
    tunnel_ifindex: int = 0  # cilia_vxlan in tunnel mode: where traffic for a tunnel endpoint goes; 0 = native

    @classmethod
    def node(cls, aggregation: int, aggregation_interval: int) -> EndpointConfig:
        """The configuration of programs that belong to the node, not a pod (bpf_host.o): endpoint 0."""
        return cls(0, 1, 0, "00:00:00:00:00:00", "00:00:00:00:00:00", None, None, None, None,
                   aggregation, aggregation_interval)

    def pack(self) -> bytes:
        flags = (FLAG_HAS_IPV4 if self.pod_ipv4 else 0) | (FLAG_HAS_IPV6 if self.pod_ipv6 else 0)
        zero4, zero16 = b"\0" * 4, b"\0" * 16
        return _LAYOUT.pack(
            self.endpoint_id,
            self.identity,
            self.lxc_ifindex,
            flags,
            mac_bytes(self.lxc_mac),
            mac_bytes(self.pod_mac),
            self.pod_ipv4.packed if self.pod_ipv4 else zero4,
            self.pod_ipv6.packed if self.pod_ipv6 else zero16,
            self.router_ipv4.packed if self.router_ipv4 else zero4,
            self.router_ipv6.packed if self.router_ipv6 else zero16,
            self.aggregation,
            self.aggregation_interval,
            self.tunnel_ifindex,
        )


CONFIG_SIZE = _LAYOUT.size


_HOST_LAYOUT = HOST_CONFIG.codec


@dataclass(frozen=True)
class HostConfig:
    """Mirror of `struct host_config` (bpf/lib/host_config.h): Maglev's M and seed for bpf_host.o, and
    the VXLAN port in tunnel mode (0: no tunnel), whose packets from known nodes bpf_host passes first."""

    maglev_size: int
    maglev_seed: int = 0
    tunnel_port: int = 0

    def pack(self) -> bytes:
        return _HOST_LAYOUT.pack(self.maglev_size, self.maglev_seed & 0xFFFFFFFF, self.tunnel_port)
