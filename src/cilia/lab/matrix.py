"""Connectivity matrices for policy tests, in one call: every source runs one probe process in its own
netns (`python -m cilia.lab.probe --many`), all sources at once, each probing all its targets in
parallel, so a full 3 namespaces x 3 pods x 3 ports matrix takes about one probe timeout.

The machinery lives in cilia.lab.reach (which the policy e2e tests use); this module gives it the
sources x targets shape and names the shared policy topology.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cilia.lab import reach
from cilia.lab.lab import Lab
from cilia.lab.reach import NAMESPACES, PODS, PORTS, Key, Target, format_mismatches, pod_names, pod_targets

__all__ = [
    "NAMESPACES", "PODS", "PORTS", "Key", "Target", "expect_all", "format_mismatches", "pod_names", "pod_targets",
    "policy_matrix_topology", "probe_matrix", "probe_rows",
]


def policy_matrix_topology() -> dict[str, Any]:
    """Namespaces x, y, z ({ns: x} ...), pods a, b, c in each ({pod: a} ...) serving tcp 80, tcp 81 and
    udp 80, and the external host world1 serving tcp 80: the dict `parse_topology` takes."""
    return reach.policy_topology()


def probe_rows(lab: Lab, rows: Mapping[str, list[Target]], timeout: float = 1.0,
               ipv6: bool = False) -> dict[Key, bool]:
    """Each source with its own targets (say world1 -> pods tcp 80 next to pod -> pod on all ports).

    With ipv6, first waits (bounded) for the nodes' duplicate address detection: right after a pod is
    added, the node's first IPv6 packet to it would otherwise wait out a neighbour retry."""
    if ipv6:
        lab.wait_ipv6_settled()
    return reach.probe_matrix(lab, dict(rows), timeout=timeout, ipv6=ipv6)


def probe_matrix(lab: Lab, sources: list[str], targets: list[Target], timeout: float = 1.0,
                 ipv6: bool = False) -> dict[Key, bool]:
    """Every source probes every target: (source, target, port, protocol) -> connected.

    TCP counts as connected when connect() succeeds, UDP when the server's reply arrives."""
    return probe_rows(lab, {source: list(targets) for source in sources}, timeout=timeout, ipv6=ipv6)


def expect_all(keys: Iterable[Key], reachable: bool = True) -> dict[Key, bool]:
    """An expectation table with one verdict everywhere, to start from and then override."""
    return dict.fromkeys(keys, reachable)
