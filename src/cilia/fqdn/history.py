"""The agent's view of its endpoints' DNS history: which names an IP resolved to for one endpoint
(Hubble's FQDN enrichment: a flow's `destination_names` are the names of the destination IP in
the source endpoint's cache, `source_names` those of the source IP in the destination's).

Two inputs, because the name cache belongs to the DNS proxy (cilia-proxy):
- the cache file the proxy persists (cilia.fqdn.cache; re-read when it changed, looked at at most
  every STAT_INTERVAL s): the truth, with the proxy's TTL handling (min TTL, kept while a
  connection is open), `cilia fqdn cache clean` and the state across restarts;
- the proxy's DNS answers as they arrive in the access log (`learn`), which reach the agent before
  the pod has its answer, so the first connection after a lookup is named although the file is
  written only every second. What was learned before the file's last write is dropped when the
  file is re-read (the file has it, or has let it go).

Names are returned as Hubble returns them: sorted, without the trailing dot. Lookups are dict
reads (the flow fast path calls them twice per flow); an IP no name holds costs one.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from cilia.fqdn.cache import NameCache

STAT_INTERVAL = 0.5
log = logging.getLogger(__name__)
NameLookup = Callable[[int, str], list[str]]  # (endpoint id, IP text) -> names

_Index = dict[str, dict[int, frozenset[str]]]  # IP text -> endpoint id -> names (fqdn form)


class DnsHistory:
    def __init__(self, cache_file: Path | None, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._file = cache_file
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._file_written = 0.0  # wall clock of the file's last write
        self._next_stat = 0.0
        self._from_file: _Index = {}
        self._learned: dict[tuple[str, int], tuple[float, frozenset[str]]] = {}  # (ip, ep) -> (when, names)
        self._index: _Index = {}  # the two merged: what names_of reads

    def learn(self, endpoint_id: int, names: Iterable[str], ips: Iterable[str]) -> None:
        """An allowed DNS answer the proxy handed to endpoint `endpoint_id` (the query and its CNAMEs)."""
        wanted = frozenset(n if n.endswith(".") else n + "." for n in names)
        if not endpoint_id or not wanted:
            return
        now = self._wall()
        with self._lock:
            index = dict(self._index)  # replaced, never changed in place: readers take no lock
            for text in ips:
                ip = _canonical(text)
                if ip is None:
                    continue
                key = (ip, endpoint_id)
                before = self._learned.get(key)
                merged = wanted | before[1] if before else wanted
                self._learned[key] = (now, merged)
                per_ip = dict(index.get(ip, {}))
                per_ip[endpoint_id] = per_ip.get(endpoint_id, frozenset()) | merged
                index[ip] = per_ip
            self._index = index

    def names_of(self, endpoint_id: int, ip: str) -> list[str]:
        """The names `ip` resolved to for `endpoint_id`, sorted, without trailing dots ([] if none)."""
        if self._file is not None and self._clock() >= self._next_stat:
            self._maybe_reload()
        per_ip = self._index.get(ip)
        if not per_ip:
            return []
        names = per_ip.get(endpoint_id)
        return sorted(n.rstrip(".") for n in names) if names else []

    def _maybe_reload(self) -> None:
        assert self._file is not None
        with self._lock:
            if self._clock() < self._next_stat:
                return  # another thread did it meanwhile
            self._next_stat = self._clock() + STAT_INTERVAL
            try:
                st = os.stat(self._file)
                stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
                written = st.st_mtime
            except FileNotFoundError:
                stamp, written = None, 0.0
            if stamp == self._stamp:
                return
            cache = NameCache()
            try:
                if stamp is not None:
                    cache.load(self._file)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("DNS history: %s unreadable, keeping the previous one: %s", self._file, exc)
                return
            self._stamp = stamp
            self._file_written = written
            index: _Index = {}
            for row in cache.rows(self._wall()):
                per_ip = index.setdefault(row.ip, {})
                for ep in row.endpoints:
                    per_ip[ep] = per_ip.get(ep, frozenset()) | {row.name}
            self._from_file = index
            # what the file was written after is in it (or was let go by the proxy)
            self._learned = {k: v for k, v in self._learned.items() if v[0] > written}
            self._rebuild()

    def _rebuild(self) -> None:
        index: _Index = {ip: dict(per_ip) for ip, per_ip in self._from_file.items()}
        for (ip, ep), (_when, names) in self._learned.items():
            per_ip = index.setdefault(ip, {})
            per_ip[ep] = per_ip.get(ep, frozenset()) | names
        self._index = index


def _canonical(text: str) -> str | None:
    """The IP's text as flows write it (ipaddress's form); None when it is no IP."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None
