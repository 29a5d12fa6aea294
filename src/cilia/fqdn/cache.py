"""The DNS name cache: which IPs each allowed name resolved to, until when, and for whom.

Filled by the DNS proxy from the answers it hands to pods; read by its garbage collector (an
expired IP leaves the ipcache unless a connection to it is still open) and by `cilia fqdn cache
list`. Persisted as JSON (`save`/`load`), so a restarted proxy keeps what its pods resolved.

TTLs: an answer's TTL counts from when it was seen, raised to `min_ttl` (`--tofqdns-min-ttl`).
A name holds at most `max_ips` addresses (`--tofqdns-max-ips-per-hostname`): a newer answer's
addresses evict the ones seen longest ago.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DEFAULT_MIN_TTL = 0
DEFAULT_MAX_IPS = 50


@dataclass
class CachedIP:
    expires: float  # wall clock seconds
    seen: float  # last answer that carried it (eviction order)


@dataclass
class NameEntry:
    ips: dict[IPAddress, CachedIP] = field(default_factory=dict)
    endpoints: set[int] = field(default_factory=set)  # the endpoints whose lookups returned it


@dataclass(frozen=True)
class Row:
    name: str
    ip: str
    ttl_left: int
    expires: float
    endpoints: tuple[int, ...]


class NameCache:
    def __init__(self, *, min_ttl: int = DEFAULT_MIN_TTL, max_ips: int = DEFAULT_MAX_IPS) -> None:
        if max_ips < 1:
            raise ValueError("max_ips must be at least 1")
        self.min_ttl = max(0, min_ttl)
        self.max_ips = max_ips
        self._names: dict[str, NameEntry] = {}
        self._by_ip: dict[IPAddress, set[str]] = {}  # reverse index: which names hold an address
        self._lock = threading.Lock()

    def update(self, name: str, ips: Iterable[IPAddress], ttl: int, now: float, endpoint_id: int = 0,
               ) -> tuple[set[IPAddress], set[IPAddress]]:
        """An answer for `name`. Returns (addresses new to the cache, addresses evicted by the cap)."""
        expires = now + max(ttl, self.min_ttl)
        with self._lock:
            new: set[IPAddress] = set()
            entry = self._names.setdefault(name, NameEntry())
            for ip in ips:
                cached = entry.ips.get(ip)
                if cached is None:
                    entry.ips[ip] = CachedIP(expires, now)
                    holders = self._by_ip.setdefault(ip, set())
                    if not holders:
                        new.add(ip)
                    holders.add(name)
                else:
                    cached.expires = max(cached.expires, expires)
                    cached.seen = now
            evicted: set[IPAddress] = set()
            if len(entry.ips) > self.max_ips:
                order = sorted(entry.ips.items(), key=lambda kv: (kv[1].seen, kv[1].expires))
                for ip, _ in order[: len(entry.ips) - self.max_ips]:
                    del entry.ips[ip]
                    if self._unindex(ip, name):
                        evicted.add(ip)
            if endpoint_id:
                entry.endpoints.add(endpoint_id)
            return new - evicted, evicted

    def _unindex(self, ip: IPAddress, name: str) -> bool:
        """Drop name from ip's holders; True when no name holds ip any more."""
        holders = self._by_ip.get(ip)
        if holders is None:
            return True
        holders.discard(name)
        if not holders:
            del self._by_ip[ip]
            return True
        return False

    def expired(self, now: float) -> list[tuple[str, IPAddress]]:
        with self._lock:
            return [(name, ip) for name, entry in self._names.items() for ip, c in entry.ips.items()
                    if c.expires <= now]

    def remove(self, name: str, ip: IPAddress) -> bool:
        """Forget one address of a name. True when no other name holds it (its ipcache entry may go)."""
        with self._lock:
            entry = self._names.get(name)
            if entry is not None and entry.ips.pop(ip, None) is not None:
                if not entry.ips:
                    del self._names[name]
                self._unindex(ip, name)
            return ip not in self._by_ip

    def clear(self) -> set[IPAddress]:
        """Forget everything; returns the addresses that were cached."""
        with self._lock:
            ips = self._all_ips()
            self._names.clear()
            self._by_ip.clear()
            return ips

    def ips(self) -> set[IPAddress]:
        with self._lock:
            return self._all_ips()

    def names_of(self, ip: IPAddress) -> list[str]:
        with self._lock:
            return sorted(self._by_ip.get(ip, ()))

    def rows(self, now: float) -> list[Row]:
        with self._lock:
            return [Row(name, str(ip), max(0, int(c.expires - now)), c.expires, tuple(sorted(e.endpoints)))
                    for name, e in sorted(self._names.items())
                    for ip, c in sorted(e.ips.items(), key=lambda kv: (kv[0].version, kv[0]))]

    def _all_ips(self) -> set[IPAddress]:
        return set(self._by_ip)

    # ----- persistence -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {"version": 1, "names": {
                name: {"endpoints": sorted(e.endpoints),
                       "ips": {str(ip): [c.expires, c.seen] for ip, c in e.ips.items()}}
                for name, e in self._names.items()}}

    def load_json(self, raw: dict[str, Any]) -> None:
        if raw.get("version") != 1:
            raise ValueError(f"unknown name cache version {raw.get('version')!r}")
        names: dict[str, NameEntry] = {}
        for name, e in raw["names"].items():
            names[str(name)] = NameEntry(
                {ipaddress.ip_address(ip): CachedIP(float(v[0]), float(v[1])) for ip, v in e["ips"].items()},
                {int(i) for i in e["endpoints"]})
        by_ip: dict[IPAddress, set[str]] = {}
        for name, entry in names.items():
            for ip in entry.ips:
                by_ip.setdefault(ip, set()).add(name)
        with self._lock:
            self._names = names
            self._by_ip = by_ip

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json()))
        os.replace(tmp, path)

    def load(self, path: Path) -> bool:
        try:
            self.load_json(json.loads(path.read_text()))
        except FileNotFoundError:
            return False
        return True


def read_rows(path: Path, now: float) -> list[Row]:
    """The persisted cache as list rows (what the agent's API serves; the proxy owns the file)."""
    cache = NameCache()
    cache.load(path)
    return cache.rows(now)
