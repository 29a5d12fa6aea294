"""Node-local FQDN identities: one per set of toFQDNs selectors an IP is matched by.

Every toFQDNs selector (`matchName:api.example.test.`, `matchPattern:*.cdn.example.test.`) gets an
identity of its own, labelled `fqdn:<selector key>` (and reserved:world); an IP whose names match
several selectors needs the identity of that set (all their labels). Policy allows an FQDN
identity through any of its labels (FqdnPeer).

Set identities are allocated ahead, when policy is applied, for every group of selectors that
one name can match together (cilia.fqdn.overlap: `api.example.test` and `*.example.test`), so an
answer never waits for them. Sets no single name explains (a CNAME chain whose names match
different selectors, two names sharing an address) are allocated when the DNS proxy asks.

The allocation is persisted in one JSON file, which is also what the DNS proxy reads to know the
selectors and their identities (it runs apart from the agent and writes the ipcache itself):

    {"version": 1, "sets": [{"selectors": ["matchName:api.example.test."], "identity": 25165825}]}

Numbers are kept across restarts (the ipcache entries the proxy wrote stay meaningful).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from cilia.fqdn.overlap import co_matching_sets
from cilia.identity.labels import Label, LabelSet

FQDN_IDENTITY_BASE = (1 << 24) | (1 << 23)  # above the CIDR identities' numbers (1 << 24 + n)
FQDN_LABEL_SOURCE = "fqdn"
VERSION = 1
Key = frozenset[str]


def fqdn_labels(selectors: Iterable[str]) -> LabelSet:
    return LabelSet([*(Label(FQDN_LABEL_SOURCE, s) for s in selectors), Label("reserved", "world")])


def read_sets(path: Path) -> dict[Key, int]:
    """The file's selector sets -> identity ({} when absent)."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    if raw.get("version") != VERSION:
        raise ValueError(f"{path}: unknown FQDN identities version {raw.get('version')!r}")
    return {frozenset(str(s) for s in item["selectors"]): int(item["identity"]) for item in raw["sets"]}


class FqdnIdentities:
    def __init__(self, state_file: Path | None = None) -> None:
        self._state_file = state_file
        self._sets: dict[Key, int] = read_sets(state_file) if state_file else {}
        self._lock = threading.Lock()

    def sync(self, selectors: Iterable[str]) -> tuple[dict[Key, int], dict[Key, int]]:
        """Hold an identity for each selector in `selectors` and for each group of them one name can
        match together, and keep the (requested) sets made only of them. Returns (all current, released)."""
        wanted = set(selectors)
        groups = co_matching_sets(wanted)
        with self._lock:
            released = {k: v for k, v in self._sets.items() if not k <= wanted or not k}
            for key in released:
                del self._sets[key]
            before = len(self._sets)
            for selector in sorted(wanted):
                self._allocate(frozenset({selector}))
            for group in groups:
                self._allocate(group)
            if released or len(self._sets) != before or (self._state_file and not self._state_file.exists()):
                self._save()
            return dict(self._sets), released

    def request(self, selectors: Iterable[str]) -> int | None:
        """The identity for this set of (known) selectors, allocated if new; None if one is unknown."""
        key = frozenset(selectors)
        with self._lock:
            known = {s for k in self._sets if len(k) == 1 for s in k}
            if not key or not key <= known:
                return None
            if key in self._sets:
                return self._sets[key]
            number = self._allocate(key)
            self._save()
            return number

    def current(self) -> dict[Key, int]:
        with self._lock:
            return dict(self._sets)

    def _allocate(self, key: Key) -> int:
        if key in self._sets:
            return self._sets[key]
        used = set(self._sets.values())
        candidate = FQDN_IDENTITY_BASE + 1
        while candidate in used:
            candidate += 1
        self._sets[key] = candidate
        return candidate

    def _save(self) -> None:
        if self._state_file is None:
            return
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": VERSION, "sets": [
            {"selectors": sorted(k), "identity": v} for k, v in sorted(self._sets.items(), key=lambda kv: kv[1])]}))
        os.replace(tmp, self._state_file)
