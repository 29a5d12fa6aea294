"""The node's VXLAN device for tunnel routing: `cilia_vxlan`, collect-metadata ("external") mode on
the cluster's UDP port, so one device serves every remote node: the sending program sets the
remote and the VNI per packet (bpf_skb_set_tunnel_key), the receiving one reads them."""

from __future__ import annotations

import contextlib

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError as PyNetlinkError

from cilia.netlink.links import NetlinkError

VXLAN_DEVICE = "cilia_vxlan"
# What VXLAN over IPv4 adds to a pod's packet: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
VXLAN_OVERHEAD = 50
IFF_UP, IFF_NOARP = 0x1, 0x80


def _vxlan_settings(ipr: IPRoute, index: int) -> tuple[int, int] | None:
    """(collect_metadata, port) of the vxlan link at index; None if it is no vxlan."""
    info = ipr.get_links(index)[0].get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return None
    data = info.get_attr("IFLA_INFO_DATA")
    return int(data.get_attr("IFLA_VXLAN_COLLECT_METADATA") or 0), int(data.get_attr("IFLA_VXLAN_PORT") or 0)


def ensure_vxlan_device(port: int, name: str = VXLAN_DEVICE) -> int:
    """Create (or keep) the collect-metadata vxlan device on `port` and bring it up; returns its
    ifindex. A device of that name with other settings is recreated (the port changed)."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if found and _vxlan_settings(ipr, int(found[0])) != (1, port):
            ipr.link("del", index=int(found[0]))
            found = []
        if not found:
            try:
                ipr.link("add", ifname=name, kind="vxlan", vxlan_collect_metadata=1, vxlan_port=port,
                         vxlan_learning=0)
            except PyNetlinkError as exc:
                raise NetlinkError(f"creating {name} (vxlan external, port {port}): {exc}") from exc
            found = ipr.link_lookup(ifname=name)
        index = int(found[0])
        # NOARP: the node's stack sends into the tunnel by route (cilia.netlink.routes) and a
        # collect-metadata device cannot carry the neighbour discovery a resolution would need
        ipr.link("set", index=index, flags=IFF_NOARP | IFF_UP, change=IFF_NOARP | IFF_UP)
        return index


def delete_vxlan_device(name: str = VXLAN_DEVICE) -> None:
    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=name):
            with contextlib.suppress(PyNetlinkError):
                ipr.link("del", index=index)
