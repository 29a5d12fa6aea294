"""Reachability matrices for policy tests: every source probes all its targets in parallel, and
all sources run at once, so a 9 x 9 x 3 matrix takes about one probe timeout."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cilia.lab.lab import PYTHON, Lab, in_netns

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
PORTS = ((80, "tcp"), (81, "tcp"), (80, "udp"))


@dataclass(frozen=True, order=True)
class Target:
    name: str  # a lab name: "ns/pod", an external host, a node
    port: int
    protocol: str = "tcp"


Key = tuple[str, str, int, str]  # source, target, port, protocol


def policy_topology() -> dict[str, Any]:
    """Three namespaces x three pods serving tcp 80, tcp 81 and udp 80, plus one external host."""
    return {
        "nodes": [{"name": "n1", "podCIDRv4": "10.200.1.0/24", "podCIDRv6": "fd00:200:1::/64"}],
        "namespaces": [{"name": ns, "labels": {"ns": ns}} for ns in NAMESPACES],
        "pods": [{"name": pod, "namespace": ns, "labels": {"pod": pod},
                  "ports": [{"port": 80, "protocol": "tcp", "name": "serve-80"}, {"port": 81, "protocol": "tcp"},
                            {"port": 80, "protocol": "udp", "name": "serve-udp"}]}
                 for ns in NAMESPACES for pod in PODS],
        "externals": [{"name": "world1", "ports": [{"port": 80, "protocol": "tcp"}]}],
    }


def pod_names() -> list[str]:
    return [f"{ns}/{pod}" for ns in NAMESPACES for pod in PODS]


def pod_targets() -> list[Target]:
    return [Target(name, port, protocol) for name in pod_names() for port, protocol in PORTS]


def probe_row(lab: Lab, source: str, targets: list[Target], timeout: float, ipv6: bool = False) -> dict[Key, bool]:
    request = [{"to": lab.address_of(t.name, ipv6), "port": t.port, "protocol": t.protocol} for t in targets]
    command = in_netns(lab.netns_of(source), PYTHON, "-m", "cilia.lab.probe", "--many", json.dumps(request),
                       "--timeout", str(timeout))
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 60, check=False)
    try:
        answers: list[dict[str, Any]] = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise RuntimeError(f"probes from {source} failed: {result.stderr.strip()}") from exc
    return {(source, t.name, t.port, t.protocol): a["verdict"] == "connected" for t, a in zip(targets, answers,
                                                                                              strict=True)}


def probe_matrix(lab: Lab, rows: dict[str, list[Target]], timeout: float = 1.0,
                 ipv6: bool = False) -> dict[Key, bool]:
    """rows: source -> the targets it probes. Returns reachability per (source, target, port, protocol)."""
    found: dict[Key, bool] = {}
    with ThreadPoolExecutor(max_workers=max(1, len(rows))) as pool:
        for part in pool.map(lambda item: probe_row(lab, item[0], item[1], timeout, ipv6), rows.items()):
            found.update(part)
    return found


def format_mismatches(expected: dict[Key, bool], actual: dict[Key, bool]) -> str:
    lines = []
    for key in sorted(expected):
        if actual.get(key) != expected[key]:
            source, target, port, protocol = key
            lines.append(f"  {source} -> {target}:{port}/{protocol}: expected "
                         f"{'reachable' if expected[key] else 'blocked'}, got "
                         f"{'reachable' if actual.get(key) else 'blocked'}")
    return "\n".join(lines)
