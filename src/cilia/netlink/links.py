"""Endpoint veth pairs over pyroute2: create (with rollback), delete, inspect.

Runs in the agent's network namespace (the node's). The container side is configured through
a second IPRoute bound to the container's netns path (/run/netns/X or /proc/PID/ns/net).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import os
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError as PyNetlinkError

IFA_F_NODAD = 0x02
RTNH_F_ONLINK = 0x04
RT_SCOPE_LINK = 253


class NetlinkError(Exception):
    """A netlink step failed; the message names the step and the object."""


@dataclass(frozen=True)
class EndpointLinkSpec:
    host_ifname: str
    container_netns: str
    container_ifname: str
    container_mac: str | None
    mtu: int
    ipv4: ipaddress.IPv4Address | None
    ipv6: ipaddress.IPv6Address | None
    gateway_ipv4: ipaddress.IPv4Address | None
    gateway_ipv6: ipaddress.IPv6Address | None


@dataclass(frozen=True)
class EndpointLink:
    host_ifname: str
    host_ifindex: int
    host_mac: str
    container_mac: str
    container_ifindex: int


def _peer_name(host_ifname: str) -> str:
    return "tmp" + hashlib.sha256(host_ifname.encode()).hexdigest()[:11]


def link_index(name: str) -> int | None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        return int(found[0]) if found else None


def link_mtu(name: str) -> int | None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        return int(ipr.get_links(found[0])[0].get("IFLA_MTU")) if found else None


def _link_attr(ipr: IPRoute, index: int, attr: str) -> str:
    return str(ipr.get_links(index)[0].get(attr))


def create_endpoint_link(spec: EndpointLinkSpec) -> EndpointLink:
    """veth in this netns, peer moved into the container and configured; undone on any failure."""
    if not os.path.exists(spec.container_netns):
        raise NetlinkError(f"container netns {spec.container_netns!r} does not exist")
    peer = _peer_name(spec.host_ifname)
    step = "creating veth"
    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=spec.host_ifname, kind="veth", peer={"ifname": peer}, mtu=spec.mtu)
            host_index = int(ipr.link_lookup(ifname=spec.host_ifname)[0])
            peer_index = int(ipr.link_lookup(ifname=peer)[0])
            step = "moving the peer into the container netns"
            fd = os.open(spec.container_netns, os.O_RDONLY)
            try:
                ipr.link("set", index=peer_index, net_ns_fd=fd)
            finally:
                os.close(fd)
            step = "configuring the container side"
            container_mac, container_index = _configure_container(spec, peer)
            step = "configuring the host side"
            ipr.link("set", index=host_index, state="up")
            for address in (spec.ipv4, spec.ipv6):
                if address is not None:
                    ipr.route(
                        "replace", dst=f"{address}/{address.max_prefixlen}", oif=host_index, scope=RT_SCOPE_LINK
                    )
            host_mac = _link_attr(ipr, host_index, "address")
        except Exception as exc:
            _cleanup(spec, peer)
            if isinstance(exc, NetlinkError):
                raise
            raise NetlinkError(f"endpoint link {spec.host_ifname}: {step} failed: {exc}") from exc
    return EndpointLink(spec.host_ifname, host_index, host_mac, container_mac, container_index)


def _configure_container(spec: EndpointLinkSpec, peer: str) -> tuple[str, int]:
    with IPRoute(netns=spec.container_netns) as cipr:
        found = cipr.link_lookup(ifname=peer)
        if not found:
            raise NetlinkError(f"peer {peer} did not arrive in {spec.container_netns}")
        index = int(found[0])
        if cipr.link_lookup(ifname=spec.container_ifname):
            raise NetlinkError(
                f"container netns {spec.container_netns} already has an interface {spec.container_ifname!r}"
            )
        settings: dict[str, object] = {"ifname": spec.container_ifname, "mtu": spec.mtu}
        if spec.container_mac:
            settings["address"] = spec.container_mac
        cipr.link("set", index=index, **settings)
        cipr.link("set", index=index, state="up")
        lo = cipr.link_lookup(ifname="lo")
        if lo:
            cipr.link("set", index=int(lo[0]), state="up")
        if spec.ipv4 is not None:
            cipr.addr("add", index=index, address=str(spec.ipv4), prefixlen=32)
        if spec.ipv6 is not None:
            cipr.addr("add", index=index, address=str(spec.ipv6), prefixlen=128, flags=IFA_F_NODAD)
        if spec.ipv4 is not None and spec.gateway_ipv4 is not None:
            cipr.route("add", dst="0.0.0.0/0", gateway=str(spec.gateway_ipv4), oif=index, flags=RTNH_F_ONLINK)
        if spec.ipv6 is not None and spec.gateway_ipv6 is not None:
            cipr.route(
                "add", dst="::/0", gateway=str(spec.gateway_ipv6), oif=index, flags=RTNH_F_ONLINK, family=10
            )
        return _link_attr(cipr, index, "address"), index


def _cleanup(spec: EndpointLinkSpec, peer: str) -> None:
    """Remove whatever a failed create left: the host side (which takes the peer) or a lone peer."""
    with IPRoute() as ipr:
        for name in (spec.host_ifname, peer):
            for index in ipr.link_lookup(ifname=name):
                with contextlib.suppress(PyNetlinkError):
                    ipr.link("del", index=index)
    if os.path.exists(spec.container_netns):
        with contextlib.suppress(Exception), IPRoute(netns=spec.container_netns) as cipr:
            for index in cipr.link_lookup(ifname=peer):
                cipr.link("del", index=index)


def delete_endpoint_link(host_ifname: str) -> bool:
    """Delete the host side (the kernel deletes the peer and the routes via it). False if absent."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=host_ifname)
        if not found:
            return False
        try:
            ipr.link("del", index=found[0])
        except PyNetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise NetlinkError(f"deleting link {host_ifname}: {exc}") from exc
        return True


def container_link_info(netns_path: str, ifname: str) -> tuple[str, list[str]] | None:
    """(mac, addresses) of `ifname` inside a container netns, for CNI CHECK; None if absent."""
    if not os.path.exists(netns_path):
        return None
    with IPRoute(netns=netns_path) as cipr:
        found = cipr.link_lookup(ifname=ifname)
        if not found:
            return None
        index = int(found[0])
        mac = _link_attr(cipr, index, "address")
        addresses = [str(a.get("address")) for a in cipr.get_addr(index=index)]
        return mac, addresses
