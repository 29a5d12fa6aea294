"""Address codecs shared by the map modules: the datapath's 16-byte v4-mapped form."""

from __future__ import annotations

import ipaddress
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6


def family_of(address: IPAddress) -> int:
    return AF_INET if address.version == 4 else AF_INET6


def addr16(address: IPAddress) -> bytes:
    """IPv4 as ::ffff:a.b.c.d (what conntrack and the endpoints map store), IPv6 as is."""
    if address.version == 4:
        return b"\0" * 10 + b"\xff\xff" + address.packed
    return address.packed


def from_addr16(raw: bytes, family: int) -> IPAddress:
    if family == AF_INET:
        return ipaddress.IPv4Address(raw[12:16])
    return ipaddress.IPv6Address(raw[:16])


def mac_bytes(mac: str) -> bytes:
    parts = mac.split(":")
    if len(parts) != 6:
        raise ValueError(f"MAC address {mac!r} must have six colon-separated octets")
    return bytes(int(part, 16) for part in parts)


def mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw[:6])
