"""Baseline topologies in cilia-bench-* namespaces (never the root namespace), torn down in finally."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


def sh(*args: str, stdin: str | None = None) -> None:
    subprocess.run(list(args), input=stdin, capture_output=True, text=True, check=True, timeout=120)


def delete(*names: str) -> None:
    for name in names:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@contextmanager
def bare_veth() -> Iterator[tuple[str, str, str]]:
    """Two namespaces joined by one veth pair: the limit any datapath is measured against."""
    a, b = "cilia-bench-a", "cilia-bench-b"
    delete(a, b)
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b)
        for name, ip in ((a, "10.77.0.1/24"), (b, "10.77.0.2/24")):
            sh("ip", "-n", name, "addr", "add", ip, "dev", "eth0")
            sh("ip", "-n", name, "link", "set", "eth0", "up")
            sh("ip", "-n", name, "link", "set", "lo", "up")
        yield a, b, "10.77.0.2"
    finally:
        delete(a, b)


def wire_routed_node(node: str, pods: Sequence[str], subnet: str) -> None:
    """Create `node` and `pods` as namespaces; pod i (from 1) gets eth0 <subnet>.i.2/24 on a veth
    whose node side, veth<i>, holds <subnet>.i.1 and is the pod's default gateway. The node forwards."""
    for name in (*pods, node):
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
    for index, pod in enumerate(pods, start=1):
        sh("ip", "-n", node, "link", "add", f"veth{index}", "type", "veth", "peer", "name", "eth0", "netns", pod)
        sh("ip", "-n", node, "addr", "add", f"{subnet}.{index}.1/24", "dev", f"veth{index}")
        sh("ip", "-n", node, "link", "set", f"veth{index}", "up")
        sh("ip", "-n", pod, "addr", "add", f"{subnet}.{index}.2/24", "dev", "eth0")
        sh("ip", "-n", pod, "link", "set", "eth0", "up")
        sh("ip", "-n", pod, "route", "add", "default", "via", f"{subnet}.{index}.1")
    sh("nsenter", f"--net=/run/netns/{node}", "sysctl", "-qw", "net.ipv4.ip_forward=1")


@contextmanager
def routed_iptables(rules: int, prefix: str = "cilia-bench", subnet: str = "10.78") -> Iterator[tuple[str, str, str]]:
    """The classic path: pods on veths into a node that forwards through `rules` iptables FORWARD rules
    (none matching the test traffic, then ACCEPT), as a kube-proxy/NetworkPolicy-by-iptables node would.
    Namespaces <prefix>-pa, -pb, -node (another prefix: several such nodes up at once)."""
    a, b, node = f"{prefix}-pa", f"{prefix}-pb", f"{prefix}-node"
    delete(a, b, node)
    try:
        wire_routed_node(node, (a, b), subnet)
        lines = ["*filter", ":FORWARD ACCEPT [0:0]"]
        for i in range(rules):
            lines.append(f"-A FORWARD -s 172.{16 + i // 65536 % 16}.{i // 256 % 256}.{i % 256}/32 -p tcp "
                         f"--dport {1000 + i % 60000} -j DROP")
        lines += ["-A FORWARD -j ACCEPT", "COMMIT", ""]
        sh("nsenter", f"--net=/run/netns/{node}", "iptables-restore", stdin="\n".join(lines))
        yield a, b, f"{subnet}.2.2"
    finally:
        delete(a, b, node)
