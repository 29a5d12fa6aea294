"""The cluster's datapath plan (cilia.datapath.cluster): which ipcache entries and routes a cluster
view asks for, and a diff that writes only what changed and never touches an entry it did not write."""

from __future__ import annotations

import ipaddress

from cilia.cluster.model import ClusterView, NodeRecord, RemoteEndpoint, RemoteEndpoints, RoutingMode
from cilia.datapath.cluster import (
    desired_ipcache,
    desired_ipcache_packed,
    desired_routes,
    ipcache_diff,
    packed_ipcache_diff,
)
from cilia.identity.reserved import ReservedIdentity
from cilia.maps.ipcache import FLAG_CLUSTER, FLAG_NATIVE, IpcacheValue, pack_key
from cilia.netlink.routes import PodCidrRoute

net = ipaddress.ip_network
ip = ipaddress.ip_address


def node(name: str, n: int) -> NodeRecord:
    return NodeRecord(name, ipaddress.IPv4Address(f"192.0.2.{10 + n}"), ipaddress.IPv6Address(f"fd00:c1a::{10 + n}"),
                      (net(f"10.200.{n}.0/24"), net(f"fd00:200:{n}::/64")), RoutingMode.NATIVE)


def view(mode: RoutingMode) -> ClusterView:
    return ClusterView(mode, "a", (node("a", 1), node("b", 2)), {
        net("10.200.2.5/32"): RemoteEndpoint(300, ipaddress.IPv4Address("192.0.2.12")),
        net("fd00:200:2::5/128"): RemoteEndpoint(300, ipaddress.IPv4Address("192.0.2.12")),
    })


def test_native_routes_go_to_each_other_node_by_family() -> None:
    assert desired_routes(view(RoutingMode.NATIVE)) == {
        net("10.200.2.0/24"): PodCidrRoute(via=ip("192.0.2.12")),
        net("fd00:200:2::/64"): PodCidrRoute(via=ip("fd00:c1a::12"))}


def test_tunnel_routes_go_into_the_tunnel_to_the_nodes_ipv4_as_remote_node() -> None:
    b = ipaddress.IPv4Address("192.0.2.12")
    assert desired_routes(view(RoutingMode.TUNNEL)) == {  # sourced from this node's underlay address
        net("10.200.2.0/24"): PodCidrRoute(tunnel_endpoint=b, vni=6, source=ip("192.0.2.11")),
        net("fd00:200:2::/64"): PodCidrRoute(tunnel_endpoint=b, vni=6, source=ip("fd00:c1a::11"))}


def test_native_ipcache_has_identities_and_remote_nodes_but_no_tunnel() -> None:
    desired = desired_ipcache(view(RoutingMode.NATIVE))
    assert desired == {
        net("10.200.2.5/32"): IpcacheValue(300, 0, FLAG_CLUSTER),
        net("fd00:200:2::5/128"): IpcacheValue(300, 0, FLAG_CLUSTER),
        net("192.0.2.12/32"): IpcacheValue(int(ReservedIdentity.REMOTE_NODE), 0, FLAG_CLUSTER),
        net("fd00:c1a::12/128"): IpcacheValue(int(ReservedIdentity.REMOTE_NODE), 0, FLAG_CLUSTER),
    }  # the local node "a" is not there: it stays `host`


def test_native_ipcache_flags_remote_pods_inside_the_direct_cidrs_only() -> None:
    """Remote pods the node never masquerades (inside a native-routing CIDR) are forwarded by the
    pods' programs (FLAG_NATIVE); the other nodes' own addresses and pods outside stay on the stack."""
    direct = (net("10.200.0.0/16"),)
    desired = desired_ipcache(view(RoutingMode.NATIVE), direct)
    assert desired[net("10.200.2.5/32")] == IpcacheValue(300, 0, FLAG_CLUSTER | FLAG_NATIVE)
    assert desired[net("fd00:200:2::5/128")] == IpcacheValue(300, 0, FLAG_CLUSTER)  # no v6 CIDR given
    assert desired[net("192.0.2.12/32")].flags == FLAG_CLUSTER
    everything = (net("0.0.0.0/0"), net("::/0"))  # masquerade off
    assert desired_ipcache(view(RoutingMode.NATIVE), everything)[net("fd00:200:2::5/128")].flags == (
        FLAG_CLUSTER | FLAG_NATIVE)
    compact = ClusterView(RoutingMode.NATIVE, "a", view(RoutingMode.NATIVE).nodes,
                          RemoteEndpoints(((ip("10.200.2.5"), RemoteEndpoint(300, None)),
                                           (ip("10.201.0.7"), RemoteEndpoint(300, None)))))
    packed = desired_ipcache_packed(compact, direct)
    assert IpcacheValue.unpack(packed[pack_key(net("10.200.2.5/32"))]).flags == FLAG_CLUSTER | FLAG_NATIVE
    assert IpcacheValue.unpack(packed[pack_key(net("10.201.0.7/32"))]).flags == FLAG_CLUSTER
    # the tunnel encapsulates every remote pod itself: never flagged native
    assert all(v.flags == FLAG_CLUSTER for v in desired_ipcache(view(RoutingMode.TUNNEL), everything).values())


def test_tunnel_ipcache_carries_the_nodes_underlay_ipv4_also_for_its_pod_cidrs() -> None:
    desired = desired_ipcache(view(RoutingMode.TUNNEL))
    assert desired[net("10.200.2.5/32")].tunnel_address == ip("192.0.2.12")
    assert desired[net("fd00:200:2::5/128")].tunnel_address == ip("192.0.2.12")
    world = IpcacheValue.remote(int(ReservedIdentity.WORLD), ipaddress.IPv4Address("192.0.2.12"))
    assert desired[net("10.200.2.0/24")] == world
    assert desired[net("192.0.2.12/32")].tunnel_endpoint == 0
    # network order in the map: 192.0.2.12 is the bytes c0 00 02 0c
    assert desired[net("10.200.2.5/32")].pack()[4:8] == bytes([192, 0, 2, 12])


def test_diff_writes_nothing_when_nothing_changed_and_removes_only_its_own() -> None:
    desired = desired_ipcache(view(RoutingMode.NATIVE))
    local_pod = IpcacheValue(256)  # attach_endpoint's entry: no cluster flag
    cidr = IpcacheValue(16777217)
    current = {**desired, net("10.200.1.7/32"): local_pod, net("10.0.0.0/8"): cidr,
               net("0.0.0.0/0"): IpcacheValue(2)}
    assert ipcache_diff(current, desired).empty
    gone = {p: v for p, v in desired.items() if p != net("10.200.2.5/32")}
    diff = ipcache_diff(current, gone)
    assert diff.delete == (net("10.200.2.5/32"),) and not diff.put


def test_diff_never_overwrites_a_local_pods_entry() -> None:
    desired = desired_ipcache(view(RoutingMode.NATIVE))
    current = {net("10.200.2.5/32"): IpcacheValue(256)}  # the IP is a local pod's now
    diff = ipcache_diff(current, desired)
    assert net("10.200.2.5/32") not in diff.put and diff.kept_foreign == (net("10.200.2.5/32"),)
    assert diff.delete == ()


def test_diff_updates_a_changed_identity_or_tunnel_endpoint() -> None:
    before = desired_ipcache(view(RoutingMode.NATIVE))
    after = desired_ipcache(view(RoutingMode.TUNNEL))
    diff = ipcache_diff(before, after)
    assert diff.put[net("10.200.2.5/32")].tunnel_address == ip("192.0.2.12")
    assert net("192.0.2.12/32") not in diff.put  # unchanged


def test_an_encap_route_read_back_from_netlink_names_its_node_and_vni() -> None:
    from cilia.netlink.routes import _encap_dst, _encap_vni

    # RTA_ENCAP of `encap ip id 6 dst 192.0.2.12 ttl 64`, as pyroute2 hands it over
    raw = ("0c:00:01:00:00:00:00:00:00:00:00:06:08:00:02:00:c0:00:02:0c:08:00:03:00:00:00:00:00:05:00:05:00:"
           "00:00:00:00:05:00:04:00:40:00:00:00:06:00:06:00:00:00:00:00")
    assert _encap_dst(raw) == ip("192.0.2.12") and _encap_vni(raw) == 6
    assert _encap_dst(None) is None and _encap_vni(None) == 0


def test_packed_plan_is_the_same_for_a_compact_view_and_its_diff_streams_the_map() -> None:
    plain = view(RoutingMode.TUNNEL)
    compact = ClusterView(plain.routing_mode, plain.local_node, plain.nodes,
                          RemoteEndpoints((p.network_address, e) for p, e in plain.remote_endpoints.items()))
    desired = desired_ipcache_packed(plain)
    assert desired_ipcache_packed(compact) == desired
    assert {pack_key(p): v.pack() for p, v in desired_ipcache(compact).items()} == desired
    held = dict(desired)
    held[pack_key(net("10.200.1.7/32"))] = IpcacheValue(256).pack()  # a local pod's: not ours
    held[pack_key(net("10.200.2.9/32"))] = IpcacheValue(300, 0, FLAG_CLUSTER).pack()  # ours, gone
    diff = packed_ipcache_diff(iter(held.items()), desired_ipcache_packed(compact))
    assert diff.put == {} and diff.delete == (pack_key(net("10.200.2.9/32")),) and diff.kept_foreign == ()
