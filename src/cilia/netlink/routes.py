"""Routes to the other nodes' pod CIDRs, tagged with cilia's route protocol so a sync finds,
replaces and removes exactly the routes it installed and never one it did not:
- native routing: each CIDR via the owning node's underlay address;
- tunnel routing: each CIDR into cilia_vxlan with a lightweight-tunnel encap (remote = the node's
  underlay IPv4, VNI = remote-node), for what the node's own stack sends there (its processes, a
  NodePort connection forwarded to a backend on that node). Pods' traffic never uses these: their
  program encapsulates it with their own identity (bpf_lxc.c).

pyroute2 cannot write an `encap ip` route, so those go through `ip route` (iproute2); everything
else, including reading them back, is netlink."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
import subprocess
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError as PyNetlinkError

from cilia.netlink.links import NetlinkError
from cilia.netlink.vxlan import VXLAN_DEVICE, VXLAN_OVERHEAD

log = logging.getLogger(__name__)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# rtm_protocol of cilia's routes (`ip route show proto 193`); unassigned in iproute2's rt_protos.
ROUTE_PROTOCOL = 193
LWTUNNEL_ENCAP_IP = 2
LWTUNNEL_IP_DST = 2


@dataclass(frozen=True)
class PodCidrRoute:
    """Where a remote pod CIDR goes: via a gateway (native) or into the tunnel to a node (tunnel)."""

    via: IPAddress | None = None
    tunnel_endpoint: ipaddress.IPv4Address | None = None
    vni: int = 0  # tunnel: the identity the receiving node gives what the stack sends (remote-node)
    source: IPAddress | None = None  # tunnel: this node's underlay address, so answers come back to it


def _encap_dst(encap: object) -> ipaddress.IPv4Address | None:
    """LWTUNNEL_IP_DST out of an RTA_ENCAP that pyroute2 hands over as hex (nested attributes)."""
    if not isinstance(encap, str):
        return None
    raw = bytes.fromhex(encap.replace(":", ""))
    offset = 0
    while offset + 4 <= len(raw):
        length, kind = struct.unpack_from("=HH", raw, offset)
        if length < 4:
            break
        if kind == LWTUNNEL_IP_DST and length >= 8:
            return ipaddress.IPv4Address(raw[offset + 4:offset + 8])
        offset += (length + 3) & ~3
    return None


def _encap_vni(encap: object) -> int:
    if not isinstance(encap, str):
        return 0
    raw = bytes.fromhex(encap.replace(":", ""))
    if len(raw) >= 12 and struct.unpack_from("=HH", raw, 0) == (12, 1):
        return int(struct.unpack_from("!Q", raw, 4)[0])
    return 0


def pod_cidr_routes() -> dict[Network, PodCidrRoute]:
    """The routes cilia installed in this netns."""
    found: dict[Network, PodCidrRoute] = {}
    with IPRoute() as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family, proto=ROUTE_PROTOCOL):
                dst = route.get("RTA_DST")
                if dst is None:
                    continue
                cidr = ipaddress.ip_network(f"{dst}/{route['dst_len']}")
                if route.get("RTA_ENCAP_TYPE") == LWTUNNEL_ENCAP_IP:
                    encap = route.get("RTA_ENCAP")
                    source = route.get("RTA_PREFSRC")
                    found[cidr] = PodCidrRoute(tunnel_endpoint=_encap_dst(encap), vni=_encap_vni(encap),
                                               source=ipaddress.ip_address(str(source)) if source else None)
                elif (gateway := route.get("RTA_GATEWAY")) is not None:
                    found[cidr] = PodCidrRoute(via=ipaddress.ip_address(str(gateway)))
    return found


def _install(ipr: IPRoute, cidr: Network, route: PodCidrRoute) -> None:
    family = socket.AF_INET if cidr.version == 4 else socket.AF_INET6
    if route.via is not None:
        ipr.route("replace", dst=str(cidr), gateway=str(route.via), family=family, proto=ROUTE_PROTOCOL)
        return
    command = ["ip", "-4" if cidr.version == 4 else "-6", "route", "replace", str(cidr),
               "encap", "ip", "id", str(route.vni), "dst", str(route.tunnel_endpoint), "ttl", "64",
               "dev", VXLAN_DEVICE, "proto", str(ROUTE_PROTOCOL), "mtu", str(1500 - VXLAN_OVERHEAD),
               *(["src", str(route.source)] if route.source is not None else [])]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=10)
    if done.returncode != 0:
        raise NetlinkError(f"{' '.join(command)}: {done.stderr.strip()}")


def sync_pod_cidr_routes(desired: dict[Network, PodCidrRoute]) -> int:
    """Make cilia's routes exactly `desired`; routes of other protocols are never touched. Returns
    the number of changes (0 when nothing differed). A route the kernel refuses (a gateway not on
    any link) is logged and skipped, so one bad node record does not keep the others from routing."""
    current = pod_cidr_routes()
    changes = 0
    with IPRoute() as ipr:
        for cidr, route in sorted(desired.items(), key=lambda item: str(item[0])):
            if current.get(cidr) == route:
                continue
            try:
                _install(ipr, cidr, route)
                changes += 1
            except (PyNetlinkError, NetlinkError) as exc:
                log.error("route to pod CIDR %s (%s) refused: %s", cidr, route, exc)
        for cidr in current.keys() - desired.keys():
            family = socket.AF_INET if cidr.version == 4 else socket.AF_INET6
            try:
                ipr.route("del", dst=str(cidr), family=family, proto=ROUTE_PROTOCOL)
                changes += 1
            except PyNetlinkError as exc:
                if exc.code != errno.ESRCH:
                    raise NetlinkError(f"removing the route to {cidr}: {exc}") from exc
    return changes
