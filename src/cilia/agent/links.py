"""Adapter: the endpoint manager's link steps on top of cilia.netlink."""

from __future__ import annotations

import ipaddress

from cilia.endpoint.record import EndpointRecord
from cilia.netlink import EndpointLinkSpec, create_endpoint_link, delete_endpoint_link, link_index
from cilia.netlink.links import link_mtu


def _ip4(text: str | None) -> ipaddress.IPv4Address | None:
    return ipaddress.IPv4Address(text) if text else None


def _ip6(text: str | None) -> ipaddress.IPv6Address | None:
    return ipaddress.IPv6Address(text) if text else None


class NetlinkLinks:
    def __init__(self, encap_overhead: int = 0, underlay_device: str | None = None) -> None:
        # tunnel mode: the pod's MTU leaves room for the encapsulation (DatapathAdapter.encap_overhead)
        # on the underlay, whose MTU bounds what the pod may send once encapsulated
        self._encap_overhead = encap_overhead
        self._underlay_device = underlay_device

    def create(self, record: EndpointRecord, mtu: int) -> EndpointRecord:
        if self._encap_overhead:
            underlay = link_mtu(self._underlay_device) if self._underlay_device else None
            mtu = min(mtu, underlay or mtu) - self._encap_overhead
        link = create_endpoint_link(
            EndpointLinkSpec(
                host_ifname=record.host_ifname,
                container_netns=record.netns,
                container_ifname=record.ifname,
                container_mac=record.mac or None,
                mtu=mtu,
                ipv4=_ip4(record.ipv4),
                ipv6=_ip6(record.ipv6),
                gateway_ipv4=_ip4(record.gateway_ipv4),
                gateway_ipv6=_ip6(record.gateway_ipv6),
            )
        )
        return record.model_copy(update={"host_ifindex": link.host_ifindex, "host_mac": link.host_mac,
                                         "mac": link.container_mac})

    def delete(self, record: EndpointRecord) -> None:
        delete_endpoint_link(record.host_ifname)

    def host_ifindex(self, host_ifname: str) -> int | None:
        return link_index(host_ifname)
