"""Node-level networking in the agent's netns: the router device, forwarding, masquerade (except
towards the native-routing CIDRs, so pod-to-pod traffic across nodes keeps the pod's address)."""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute

from cilia.netlink.links import IFA_F_NODAD, NetlinkError

# The router IPs live on the node's loopback: this kernel has no dummy devices, and any
# local address answers the pods' gateway traffic the same way.
HOST_DEVICE = "lo"
MASQ_COMMENT = "cilia-masq"


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
    if cfg.masquerade:
        for tool, cidr in (("iptables", cfg.ipv4_pod_cidr), ("ip6tables", cfg.ipv6_pod_cidr)):
            if cidr is not None:
                for native in _native(cfg, cidr.version):
                    _ensure_rule(tool, _exclude_rule(str(cidr), native, cfg.underlay_device), insert=True)
                _ensure_rule(tool, _masq_rule(str(cidr), cfg.underlay_device))


def _native(cfg: NodeNetConfig, version: int) -> list[str]:
    return [str(c) for c in cfg.native_routing_cidrs if c.version == version]


# A pod's replies handed to the stack (bpf/lib/forward.h REPLY_MARK): the request reached the pod
# without netfilter (bpf_host, bpf_overlay), so netfilter would take the reply for a new connection.
REPLY_MARK = "0x0c1b0000/0xffff0000"


def _masq_rule(cidr: str, device: str) -> list[str]:
    return [
        "POSTROUTING", "-s", cidr, "!", "-d", cidr, "-o", device, "-m", "mark", "!", "--mark", REPLY_MARK,
        "-m", "comment", "--comment", MASQ_COMMENT, "-j", "MASQUERADE",
    ]


def _exclude_rule(cidr: str, native: str, device: str) -> list[str]:
    """Pod traffic to a native-routing CIDR leaves unmasqueraded: it comes before the MASQUERADE rule."""
    return [
        "POSTROUTING", "-s", cidr, "-d", native, "-o", device,
        "-m", "comment", "--comment", MASQ_COMMENT, "-j", "RETURN",
    ]


def _ensure_rule(tool: str, rule: list[str], insert: bool = False) -> None:
    check = subprocess.run([tool, "-w", "5", "-t", "nat", "-C", *rule], capture_output=True, check=False)
    if check.returncode == 0:
        return
    command = ["-I", rule[0], "1", *rule[1:]] if insert else ["-A", *rule]
    added = subprocess.run([tool, "-w", "5", "-t", "nat", *command], capture_output=True, text=True, check=False)
    if added.returncode != 0:
        raise NetlinkError(f"adding the masquerade rule {' '.join(rule)} with {tool}: {added.stderr.strip()}")


# A NodePort/LoadBalancer/externalIP connection that bpf_host forwards to a backend on another node
# carries the service mark (bpf/lib/lb.h LB_MARK_MAGIC) and leaves by the underlay or the tunnel;
# its source becomes this node's address, so the backend answers through this node, where
# netfilter undoes the SNAT and bpf_host's egress program the DNAT.
SERVICE_MARK = "0x0c1a0000/0xffff0000"
SNAT_COMMENT = "cilia-svc-snat"


def _service_snat_rule(device: str, address: str) -> list[str]:
    return ["POSTROUTING", "-m", "mark", "--mark", SERVICE_MARK, "-o", device,
            "-m", "comment", "--comment", SNAT_COMMENT, "-j", "SNAT", "--to-source", address]


def ensure_service_snat(devices: list[str], addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> None:
    """SNAT service connections forwarded to another node's backend (idempotent): to the node's
    first IPv4 and IPv6 address on the underlay, when leaving by any of `devices`."""
    for tool, version in (("iptables", 4), ("ip6tables", 6)):
        address = next((a for a in addresses if a.version == version), None)
        if address is None:
            continue
        for device in devices:
            _ensure_rule(tool, _service_snat_rule(device, str(address)))


def teardown_node_networking(cfg: NodeNetConfig) -> None:
    with IPRoute() as ipr:
        index = int(ipr.link_lookup(ifname=HOST_DEVICE)[0])
        for router, prefix in ((cfg.router_ipv4, 32), (cfg.router_ipv6, 128)):
            if router is not None:
                with contextlib.suppress(Exception):
                    ipr.addr("del", index=index, address=str(router), prefixlen=prefix)
    for tool, cidr in (("iptables", cfg.ipv4_pod_cidr), ("ip6tables", cfg.ipv6_pod_cidr)):
        if cidr is not None:
            rules = [_masq_rule(str(cidr), cfg.underlay_device),
                     *(_exclude_rule(str(cidr), native, cfg.underlay_device) for native in _native(cfg, cidr.version))]
            for rule in rules:
                subprocess.run([tool, "-w", "5", "-t", "nat", "-D", *rule], capture_output=True, check=False)
