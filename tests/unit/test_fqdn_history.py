"""cilia.fqdn.history.DnsHistory: names per (endpoint, IP) from the DNS proxy's cache file and
from its answers as they arrive; Hubble's form (sorted, no trailing dot)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from cilia.fqdn.cache import NameCache
from cilia.fqdn.history import DnsHistory


class Clock:
    def __init__(self) -> None:
        self.mono = 100.0
        self.wall = 1_000_000.0

    def tick(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def write_cache(path: Path, wall: float, entries: list[tuple[str, str, int]]) -> None:
    cache = NameCache()
    for name, ip, ep in entries:
        cache.update(name, [ipaddress.ip_address(ip)], 60, wall, ep)
    cache.save(path)
    os.utime(path, (wall, wall))


def test_answers_name_the_ip_for_their_endpoint_only(tmp_path: Path) -> None:
    clock = Clock()
    history = DnsHistory(tmp_path / "cache.json", clock=lambda: clock.mono, wall=lambda: clock.wall)
    history.learn(7, ["www.example.test.", "api.example.test."], ["198.51.100.10", "2001:db8:100:0::a"])
    assert history.names_of(7, "198.51.100.10") == ["api.example.test", "www.example.test"]
    assert history.names_of(7, "2001:db8:100::a") == ["api.example.test", "www.example.test"]  # canonical text
    assert history.names_of(8, "198.51.100.10") == [] and history.names_of(7, "198.51.100.99") == []
    history.learn(7, ["alias.example.test"], ["198.51.100.10"])
    assert history.names_of(7, "198.51.100.10") == ["alias.example.test", "api.example.test", "www.example.test"]
    history.learn(0, ["x.example.test"], ["198.51.100.10"])  # no endpoint: nothing to name it for
    history.learn(7, ["x.example.test"], ["not an ip"])


def test_the_cache_file_is_the_truth_once_written_after_an_answer(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "cache.json"
    api = "api.example.test."
    write_cache(path, clock.wall, [(api, "198.51.100.10", 7), (api, "198.51.100.10", 9)])
    history = DnsHistory(path, clock=lambda: clock.mono, wall=lambda: clock.wall)
    assert history.names_of(9, "198.51.100.10") == ["api.example.test"]  # read at the first lookup
    clock.tick(1)
    history.learn(7, ["new.example.test."], ["198.51.100.20"])
    assert history.names_of(7, "198.51.100.20") == ["new.example.test"]  # before the file has it
    clock.tick(1)
    write_cache(path, clock.wall - 1.5, [("api.example.test.", "198.51.100.10", 7)])  # a write from before it
    assert history.names_of(7, "198.51.100.20") == ["new.example.test"]
    assert history.names_of(9, "198.51.100.10") == []
    clock.tick(1)
    write_cache(path, clock.wall, [])  # `cilia fqdn cache clean` (or expiry) after that answer
    assert history.names_of(7, "198.51.100.20") == [] and history.names_of(9, "198.51.100.10") == []


def test_a_missing_or_broken_file(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "cache.json"
    history = DnsHistory(path, clock=lambda: clock.mono, wall=lambda: clock.wall)
    assert history.names_of(7, "198.51.100.10") == []
    write_cache(path, clock.wall, [("api.example.test.", "198.51.100.10", 7)])
    clock.tick(1)
    assert history.names_of(7, "198.51.100.10") == ["api.example.test"]
    path.write_text("{not json")
    clock.tick(1)
    assert history.names_of(7, "198.51.100.10") == ["api.example.test"]  # the previous one kept
