"""Routes to the other nodes' pod CIDRs (native routing): one route per remote CIDR via that node's
underlay address, tagged with cilia's route protocol so a sync finds, replaces and removes exactly
the routes it installed and never one it did not."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError as PyNetlinkError

from cilia.netlink.links import NetlinkError

log = logging.getLogger(__name__)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# rtm_protocol of cilia's routes (`ip route show proto 193`); unassigned in iproute2's rt_protos.
ROUTE_PROTOCOL = 193


def pod_cidr_routes() -> dict[Network, IPAddress]:
    """The routes cilia installed in this netns: destination -> gateway."""
    found: dict[Network, IPAddress] = {}
    with IPRoute() as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family, proto=ROUTE_PROTOCOL):
                dst, gateway = route.get("RTA_DST"), route.get("RTA_GATEWAY")
                if dst is None or gateway is None:
                    continue
                found[ipaddress.ip_network(f"{dst}/{route['dst_len']}")] = ipaddress.ip_address(str(gateway))
    return found


def sync_pod_cidr_routes(desired: dict[Network, IPAddress]) -> int:
    """Make cilia's routes exactly `desired` (CIDR -> the owning node's underlay address); routes of
    other protocols are never touched. Returns the number of changes (0 when nothing differed).
    A route the kernel refuses (a gateway not on any link) is logged and skipped, so one bad node
    record does not keep the others from being routed."""
    current = pod_cidr_routes()
    changes = 0
    with IPRoute() as ipr:
        for cidr, gateway in sorted(desired.items(), key=lambda item: str(item[0])):
            if current.get(cidr) == gateway:
                continue
            family = socket.AF_INET if cidr.version == 4 else socket.AF_INET6
            try:
                ipr.route("replace", dst=str(cidr), gateway=str(gateway), family=family, proto=ROUTE_PROTOCOL)
                changes += 1
            except PyNetlinkError as exc:
                log.error("route to pod CIDR %s via %s refused: %s", cidr, gateway, exc)
        for cidr in current.keys() - desired.keys():
            family = socket.AF_INET if cidr.version == 4 else socket.AF_INET6
            try:
                ipr.route("del", dst=str(cidr), gateway=str(current[cidr]), family=family, proto=ROUTE_PROTOCOL)
                changes += 1
            except PyNetlinkError as exc:
                if exc.code != errno.ESRCH:
                    raise NetlinkError(f"removing the route to {cidr}: {exc}") from exc
    return changes
