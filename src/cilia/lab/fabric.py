"""Fabric plumbing: the lab's "physical" network. One namespace (cilia-fabric) holding a bridge
that every node and external host is wired to by a veth pair, the routes that make pod CIDRs and
service addresses reachable across it, and the namespace sweep a teardown ends with.

Every name created here is cilia-*; the root namespace is never touched."""

from __future__ import annotations

from collections.abc import Iterable

from cilia.lab.errors import LabError
from cilia.lab.process import in_netns, sh
from cilia.testing.wait import WaitTimeout, wait_for

FABRIC = "cilia-fabric"
BRIDGE = "cilia-br0"
# The bridge's addresses: the nodes' underlay (192.0.2.0/24, fd00:c1a::/64) and the external
# hosts' network (198.51.100.0/24, 2001:db8:100::/64); the fabric routes between the two.
NODE_GATEWAYS = ("192.0.2.1", "fd00:c1a::1")
EXTERNAL_GATEWAYS = ("198.51.100.1", "2001:db8:100::1")
BRIDGE_ADDRESSES = ("192.0.2.1/24", "198.51.100.1/24", "fd00:c1a::1/64", "2001:db8:100::1/64")
# LoadBalancer and externalIP addresses in the lab: routed on the fabric to the first node.
SERVICE_ROUTES = ("203.0.113.0/24", "2001:db8:203::/64")
# Namespaces a benchmark's own baselines create and remove themselves: never swept by the lab.
BENCH_PREFIX = "cilia-bench-"


def create_fabric() -> None:
    """The fabric namespace with its bridge up, addressed on both networks, forwarding."""
    sh("ip", "netns", "add", FABRIC)
    f = ["ip", "-n", FABRIC]
    sh(*f, "link", "add", BRIDGE, "type", "bridge")
    for address in BRIDGE_ADDRESSES:
        sh(*f, "addr", "add", address, "dev", BRIDGE, *(["nodad"] if ":" in address else []))
    sh(*f, "link", "set", BRIDGE, "up")
    sh(*f, "link", "set", "lo", "up")
    sh(*in_netns(FABRIC, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"))


def attach_host(netns: str, fabric_side: str, addresses: tuple[str, str], gateways: tuple[str, str]) -> None:
    """A new namespace (node or external host) with eth0 on the fabric bridge, its IPv4 (/24) and
    IPv6 (/64) addresses and default routes via the gateways."""
    sh("ip", "netns", "add", netns)
    sh("ip", "-n", FABRIC, "link", "add", fabric_side, "type", "veth", "peer", "name", "eth0", "netns", netns)
    sh("ip", "-n", FABRIC, "link", "set", fabric_side, "master", BRIDGE, "up")
    n = ["ip", "-n", netns]
    sh(*n, "link", "set", "lo", "up")
    sh(*n, "link", "set", "eth0", "up")
    sh(*n, "addr", "add", f"{addresses[0]}/24", "dev", "eth0")
    sh(*n, "addr", "add", f"{addresses[1]}/64", "dev", "eth0", "nodad")
    sh(*n, "route", "add", "default", "via", gateways[0])
    sh(*n, "-6", "route", "add", "default", "via", gateways[1])


def route(prefix: str, via: str) -> None:
    """Route `prefix` on the fabric to a host on it (native routing: no tunnel)."""
    sh("ip", "-n", FABRIC, "route", "replace", prefix, "via", via)


def tentative_ipv6(namespaces: Iterable[str]) -> list[str]:
    """The namespaces that still have an IPv6 address in duplicate address detection."""
    return [ns for ns in namespaces
            if sh(*in_netns(ns, "ip", "-6", "-o", "addr", "show", "tentative"), check=False).stdout.strip()]


def wait_ipv6_settled(namespaces: Iterable[str], timeout: float = 5.0) -> None:
    """Bounded: until no address in `namespaces` is still tentative (see Lab.wait_ipv6_settled)."""
    names = list(namespaces)
    last: list[str] = []

    def settled() -> bool:
        last[:] = tentative_ipv6(names)
        return not last

    try:
        wait_for(settled, timeout, 0.05, lambda: f"IPv6 addresses still tentative in {', '.join(last)}")
    except WaitTimeout as exc:
        raise LabError(str(exc)) from exc


def lab_namespaces() -> list[str]:
    """Every cilia-* namespace except a benchmark's (cilia-bench-*), pods first: their veths' peers
    live in node namespaces, so a pod namespace goes before its node's."""
    listing = sh("ip", "netns", "list", check=False).stdout
    names = [line.split()[0] for line in listing.splitlines() if line.strip()]
    ours = (n for n in names if n.startswith("cilia-") and not n.startswith(BENCH_PREFIX))
    return sorted(ours, key=lambda n: (not n.startswith("cilia-pod"), n))


def remove_namespaces() -> None:
    """Delete every lab namespace (pods, nodes, external hosts, the fabric), never cilia-bench-*."""
    for name in lab_namespaces():
        sh("ip", "netns", "del", name, check=False)
