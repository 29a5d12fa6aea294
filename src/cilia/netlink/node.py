"""Node-level networking in the agent's netns: the router device, forwarding, masquerade (except
towards the native-routing CIDRs, so pod-to-pod traffic across nodes keeps the pod's address) and
the SNAT of service connections forwarded to another node; the nat rules live in chains of
cilia's own, re-created exactly on every start (cilia.netlink.natrules). In tunnel mode, no
netfilter conntrack for the tunnel's own UDP packets (raw-table NOTRACK rules)."""

from __future__ import annotations

import contextlib
import ipaddress
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute

from cilia.netlink import natrules
from cilia.netlink.links import IFA_F_NODAD, NetlinkError
from cilia.netlink.natrules import MASQ_COMMENT, SNAT_COMMENT

# The router IPs live on the node's loopback: this kernel has no dummy devices, and any
# local address answers the pods' gateway traffic the same way.
HOST_DEVICE = "lo"
__all__ = ["MASQ_COMMENT", "NOTRACK_COMMENT", "SNAT_COMMENT", "NodeNetConfig", "ensure_service_snat",
           "masquerade_rules", "setup_node_networking", "sync_tunnel_notrack", "teardown_node_networking"]


@dataclass(frozen=True)
class NodeNetConfig:
    router_ipv4: ipaddress.IPv4Address | None
    router_ipv6: ipaddress.IPv6Address | None
    ipv4_pod_cidr: ipaddress.IPv4Network | None
    ipv6_pod_cidr: ipaddress.IPv6Network | None
    underlay_device: str
    masquerade: bool = True
    # destinations reached without masquerade (--ipv4/ipv6-native-routing-cidr): the other nodes' pods
    native_routing_cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # tunnel mode: the VXLAN UDP port, whose packets between nodes netfilter does not track
    tunnel_port: int | None = None


def _sysctl(path: str, value: str) -> None:
    """Writes a sysctl of the calling process's network namespace (never run this in the root one)."""
    Path("/proc/sys", path).write_text(value)


def setup_node_networking(cfg: NodeNetConfig) -> None:
    """Idempotent: safe on every agent start, and leaves running pods untouched."""
    with IPRoute() as ipr:
        index = int(ipr.link_lookup(ifname=HOST_DEVICE)[0])
        ipr.link("set", index=index, state="up")
        existing = {str(a.get("address")) for a in ipr.get_addr(index=index)}
        if cfg.router_ipv4 is not None and str(cfg.router_ipv4) not in existing:
            ipr.addr("add", index=index, address=str(cfg.router_ipv4), prefixlen=32)
        if cfg.router_ipv6 is not None and str(cfg.router_ipv6) not in existing:
            ipr.addr("add", index=index, address=str(cfg.router_ipv6), prefixlen=128, flags=IFA_F_NODAD)
    _sysctl("net/ipv4/ip_forward", "1")
    _sysctl("net/ipv4/conf/all/rp_filter", "0")
    _sysctl("net/ipv4/conf/default/rp_filter", "0")
    # A backend's reply to a NodePort client leaves with the node's own address as its source
    # (reverse NAT in bpf_lxc); the node must forward it rather than drop it as a martian.
    _sysctl("net/ipv4/conf/all/accept_local", "1")
    if cfg.ipv6_pod_cidr is not None:
        _sysctl("net/ipv6/conf/all/forwarding", "1")
    for version in (4, 6):
        # exactly this configuration's rules (an earlier pod CIDR's are gone); first in POSTROUTING,
        # so an excluded packet is accepted before any other nat rule, as a RETURN there was
        natrules.sync_chain(version, natrules.MASQ_CHAIN, MASQ_COMMENT, masquerade_rules(cfg, version), first=True)
    sync_tunnel_notrack(cfg.tunnel_port)


# The tunnel's own packets (VXLAN over the IPv4 underlay, node to node) need no connection
# tracking: nothing NATs them. Without these rules every encapsulated packet is looked up in the
# node's netfilter conntrack on both nodes (the nat table's rules make netfilter track everything),
# and every inner connection creates an outer UDP entry (the outer source port is a hash of the
# inner flow). The inner packets are tracked by cilia's own conntrack.
NOTRACK_COMMENT = "cilia-tunnel-notrack"


def notrack_rules(port: int) -> list[list[str]]:
    return [[chain, "-p", "udp", "-m", "udp", "--dport", str(port), "-m", "comment", "--comment", NOTRACK_COMMENT,
             "-j", "CT", "--notrack"] for chain in ("PREROUTING", "OUTPUT")]


def _raw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", "5", "-t", "raw", *args], capture_output=True, text=True, check=False)


def _notrack_present() -> list[list[str]]:
    """The raw-table rules with cilia's comment (arguments for -D), whatever port they name."""
    listing = _raw("-S")
    if listing.returncode != 0:
        return []
    return [shlex.split(line)[1:] for line in listing.stdout.splitlines()
            if line.startswith("-A ") and NOTRACK_COMMENT in line]


def sync_tunnel_notrack(port: int | None) -> None:
    """Exactly the NOTRACK rules for `port` (None: none): an earlier port's are removed."""
    wanted = notrack_rules(port) if port is not None else []
    for rule in _notrack_present():
        if rule not in wanted:
            _raw("-D", *rule)
    for rule in wanted:
        if _raw("-C", *rule).returncode != 0:
            added = _raw("-A", *rule)
            if added.returncode != 0:
                raise NetlinkError(f"adding the raw rule {' '.join(rule)}: {added.stderr.strip()}")


def masquerade_rules(cfg: NodeNetConfig, version: int) -> list[list[str]]:
    """CILIA_MASQ's rules for one family: the native-routing exclusions, then the masquerade."""
    cidr = cfg.ipv4_pod_cidr if version == 4 else cfg.ipv6_pod_cidr
    if not cfg.masquerade or cidr is None:
        return []
    return [*(_exclude_rule(str(cidr), native, cfg.underlay_device) for native in _native(cfg, version)),
            _masq_rule(str(cidr), cfg.underlay_device)]


def _native(cfg: NodeNetConfig, version: int) -> list[str]:
    return [str(c) for c in cfg.native_routing_cidrs if c.version == version]


# A pod's replies handed to the stack (bpf/lib/forward.h REPLY_MARK): the request reached the pod
# without netfilter (bpf_host, bpf_overlay), so netfilter would take the reply for a new connection.
REPLY_MARK = "0x0c1b0000/0xffff0000"


def _masq_rule(cidr: str, device: str) -> list[str]:
    return [
        "-s", cidr, "!", "-d", cidr, "-o", device, "-m", "mark", "!", "--mark", REPLY_MARK,
        "-m", "comment", "--comment", MASQ_COMMENT, "-j", "MASQUERADE",
    ]


def _exclude_rule(cidr: str, native: str, device: str) -> list[str]:
    """Pod traffic to a native-routing CIDR leaves unmasqueraded: it comes before the MASQUERADE
    rule, and ACCEPT ends the nat table's POSTROUTING for it (no other nat rule applies)."""
    return [
        "-s", cidr, "-d", native, "-o", device,
        "-m", "comment", "--comment", MASQ_COMMENT, "-j", "ACCEPT",
    ]


# A NodePort/LoadBalancer/externalIP connection that bpf_host forwards to a backend on another node
# carries the service mark (bpf/lib/lb.h LB_MARK_MAGIC) and leaves by the underlay or the tunnel;
# its source becomes this node's address, so the backend answers through this node, where
# netfilter undoes the SNAT and bpf_host's egress program the DNAT.
SERVICE_MARK = "0x0c1a0000/0xffff0000"


def _service_snat_rule(device: str, address: str) -> list[str]:
    return ["-m", "mark", "--mark", SERVICE_MARK, "-o", device,
            "-m", "comment", "--comment", SNAT_COMMENT, "-j", "SNAT", "--to-source", address]


def ensure_service_snat(devices: list[str], addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> None:
    """SNAT service connections forwarded to another node's backend: to the node's first IPv4 and
    IPv6 address on the underlay, when leaving by any of `devices`. Exactly these rules (an
    earlier address's or device's are gone), after CILIA_MASQ in POSTROUTING."""
    for version in (4, 6):
        address = next((a for a in addresses if a.version == version), None)
        rules = [_service_snat_rule(device, str(address)) for device in devices] if address is not None else []
        natrules.sync_chain(version, natrules.SNAT_CHAIN, SNAT_COMMENT, rules)


def teardown_node_networking(cfg: NodeNetConfig | None = None) -> None:
    """Remove what setup_node_networking and ensure_service_snat added: every nat rule of cilia's
    (whatever configuration added it) and, given the config, the router addresses."""
    natrules.remove_all()
    sync_tunnel_notrack(None)
    if cfg is None:
        return
    with IPRoute() as ipr:
        index = int(ipr.link_lookup(ifname=HOST_DEVICE)[0])
        for router, prefix in ((cfg.router_ipv4, 32), (cfg.router_ipv6, 128)):
            if router is not None:
                with contextlib.suppress(Exception):
                    ipr.addr("del", index=index, address=str(router), prefixlen=prefix)
