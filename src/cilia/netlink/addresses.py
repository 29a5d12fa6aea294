"""Addresses configured in the calling network namespace, read over netlink."""

from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def addresses(ifindex: int | None = None) -> list[IPAddress]:
    """Every address of the link `ifindex`, or of every link when None (loopback and link-local included)."""
    with IPRoute() as ipr:
        found = ipr.get_addr(index=ifindex) if ifindex is not None else ipr.get_addr()
        return [ipaddress.ip_address(str(a.get("address"))) for a in found]
