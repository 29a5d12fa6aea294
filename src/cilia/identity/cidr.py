"""Node-local identities for the CIDRs that policies name (Cilium's CIDR identities, bit 24 set).

Each prefix a rule mentions (and each `except`) gets its own identity and ipcache entry, so the
ipcache's longest-prefix match lands every address on the most specific prefix that policy
cares about. Numbers are persisted: after an agent restart the same prefix keeps its identity
and the datapath's maps need no change.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable
from pathlib import Path

from cilia.identity.labels import Label, LabelSet
from cilia.jsonfile import read_json, write_json

CIDR_IDENTITY_BASE = 1 << 24
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def cidr_labels(prefix: Network) -> LabelSet:
    return LabelSet([Label("cidr", str(prefix)), Label("reserved", "world")])


class CidrIdentities:
    def __init__(self, state_file: Path | None = None) -> None:
        self._state_file = state_file
        state = read_json(state_file, {"prefixes": {}}) if state_file else {"prefixes": {}}
        self._ids: dict[Network, int] = {ipaddress.ip_network(k): int(v) for k, v in state["prefixes"].items()}
        self._lock = threading.Lock()

    def sync(self, prefixes: Iterable[Network]) -> tuple[dict[Network, int], dict[Network, int]]:
        """Hold identities for exactly `prefixes`. Returns (all current, released)."""
        wanted = {p for p in prefixes if p.prefixlen > 0}
        with self._lock:
            released = {p: i for p, i in self._ids.items() if p not in wanted}
            for prefix in released:
                del self._ids[prefix]
            used = set(self._ids.values())
            candidate = CIDR_IDENTITY_BASE + 1
            for prefix in sorted(wanted - self._ids.keys(), key=lambda p: (p.version, p)):
                while candidate in used:
                    candidate += 1
                self._ids[prefix] = candidate
                used.add(candidate)
            if self._state_file:
                write_json(self._state_file, {"prefixes": {str(p): i for p, i in self._ids.items()}})
            return dict(self._ids), released

    def current(self) -> dict[Network, int]:
        with self._lock:
            return dict(self._ids)

    def prefix_of(self, identity: int) -> Network | None:
        with self._lock:
            for prefix, number in self._ids.items():
                if number == identity:
                    return prefix
        return None
