"""EndpointConfig: the Python mirror of `struct ep_config` (bpf/lib/config.h), packed for .rodata."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from cilia.maps.addr import mac_bytes

# Must match bpf/lib/config.h byte for byte: the loader refuses a size mismatch.
_LAYOUT = struct.Struct("<IIII6s6s4s16s4s16sIII")
FLAG_HAS_IPV4 = 1 << 0
FLAG_HAS_IPV6 = 1 << 1
AGGREGATION_LEVELS = {"none": 0, "medium": 1}


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
            0,
        )


CONFIG_SIZE = _LAYOUT.size


_HOST_LAYOUT = struct.Struct("<II8x")


@dataclass(frozen=True)
class HostConfig:
    """Mirror of `struct host_config` (bpf/bpf_host.c)."""

    maglev_size: int
    maglev_seed: int = 0

    def pack(self) -> bytes:
        return _HOST_LAYOUT.pack(self.maglev_size, self.maglev_seed & 0xFFFFFFFF)
