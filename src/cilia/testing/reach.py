"""The reachability oracle the policy tests stand on: who reaches whom, probed for real through a
running lab, set against what is expected.

Every source runs one probe process in its own netns (`python -m cilia.lab.probe --many`), all
sources at once, each probing all its targets in parallel, so a full 3 namespaces x 3 pods x 3 ports
matrix takes about one probe timeout. TCP counts as reached when connect() succeeds, UDP when the
server's reply arrives. The shared policy topology (namespaces x, y, z with pods a, b, c) is here
too, with the names of its pods and ports.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Mapping
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
    """Namespaces x, y, z ({ns: x} ...), pods a, b, c in each ({pod: a} ...) serving tcp 80, tcp 81 and
    udp 80, and the external host world1 serving tcp 80: the dict `parse_topology` takes."""
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
    """One source probes all its targets in parallel, in one process in its namespace."""
    request = [{"to": lab.address_of(t.name, ipv6), "port": t.port, "protocol": t.protocol} for t in targets]
    command = in_netns(lab.netns_of(source), PYTHON, "-m", "cilia.lab.probe", "--many", json.dumps(request),
                       "--timeout", str(timeout))
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 60, check=False)
    try:
        answers: list[dict[str, Any]] = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise RuntimeError(f"probes from {source} failed: {result.stderr.strip()}") from exc
    return {(source, t.name, t.port, t.protocol): a["verdict"] == "connected"
            for t, a in zip(targets, answers, strict=True)}


def probe_rows(lab: Lab, rows: Mapping[str, list[Target]], timeout: float = 1.0,
               ipv6: bool = False) -> dict[Key, bool]:
    """Each source with its own targets (say world1 -> pods tcp 80 next to pod -> pod on all ports):
    (source, target, port, protocol) -> reached. All sources at once.

    With ipv6, first waits (bounded) for the nodes' duplicate address detection: right after a pod is
    added, the node's first IPv6 packet to it would otherwise wait out a neighbour retry."""
    if ipv6:
        lab.wait_ipv6_settled()
    found: dict[Key, bool] = {}
    with ThreadPoolExecutor(max_workers=max(1, len(rows))) as pool:
        for part in pool.map(lambda item: probe_row(lab, item[0], item[1], timeout, ipv6), rows.items()):
            found.update(part)
    return found


def probe_matrix(lab: Lab, sources: list[str], targets: list[Target], timeout: float = 1.0,
                 ipv6: bool = False) -> dict[Key, bool]:
    """Every source probes every target."""
    return probe_rows(lab, {source: list(targets) for source in sources}, timeout=timeout, ipv6=ipv6)


def expect_all(keys: Iterable[Key], reachable: bool = True) -> dict[Key, bool]:
    """An expectation table with one verdict everywhere, to start from and then override."""
    return dict.fromkeys(keys, reachable)


def format_mismatches(expected: dict[Key, bool], actual: dict[Key, bool]) -> str:
    """One line per key whose verdict differs (a key missing from `actual` is always one: nothing
    unprobed passes)."""
    lines = []
    for key in sorted(expected):
        if actual.get(key) != expected[key]:
            source, target, port, protocol = key
            got = "not probed" if key not in actual else "reachable" if actual[key] else "blocked"
            lines.append(f"  {source} -> {target}:{port}/{protocol}: expected "
                         f"{'reachable' if expected[key] else 'blocked'}, got {got}")
    return "\n".join(lines)
