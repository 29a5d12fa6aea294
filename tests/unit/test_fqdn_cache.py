"""The DNS name cache: TTLs with a minimum, the per-name cap, persistence (cilia.fqdn.cache)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from cilia.fqdn.cache import NameCache

A, B, C, D = (ipaddress.ip_address(f"198.51.100.{i}") for i in (1, 2, 3, 4))
V6 = ipaddress.ip_address("2001:db8::1")


def test_ttl_counts_from_the_answer() -> None:
    cache = NameCache()
    new, evicted = cache.update("a.test.", [A, V6], 30, now=1000.0, endpoint_id=7)
    assert new == {A, V6} and not evicted
    assert cache.expired(1029.9) == []
    assert set(cache.expired(1030.0)) == {("a.test.", A), ("a.test.", V6)}
    rows = cache.rows(1010.0)
    assert [(r.ip, r.ttl_left, r.endpoints) for r in rows] == [("198.51.100.1", 20, (7,)), ("2001:db8::1", 20, (7,))]


def test_min_ttl_raises_short_ttls() -> None:
    cache = NameCache(min_ttl=60)
    cache.update("a.test.", [A], 2, now=0.0)
    assert cache.expired(59.0) == [] and cache.expired(60.0) == [("a.test.", A)]


def test_a_later_answer_extends_never_shortens() -> None:
    cache = NameCache()
    cache.update("a.test.", [A], 100, now=0.0)
    cache.update("a.test.", [A], 10, now=50.0)
    assert cache.expired(99.0) == [] and cache.expired(100.0) == [("a.test.", A)]


def test_cap_evicts_the_oldest_addresses() -> None:
    cache = NameCache(max_ips=2)
    cache.update("a.test.", [A], 300, now=0.0)
    cache.update("a.test.", [B], 300, now=1.0)
    new, evicted = cache.update("a.test.", [C], 300, now=2.0)
    assert new == {C} and evicted == {A}
    assert cache.ips() == {B, C}
    cache.update("a.test.", [B], 300, now=3.0)  # seen again: now the newest
    _new, evicted = cache.update("a.test.", [D], 300, now=4.0)
    assert evicted == {C} and cache.ips() == {B, D}


def test_evicted_address_held_by_another_name_is_not_reported() -> None:
    cache = NameCache(max_ips=1)
    cache.update("b.test.", [A], 300, now=0.0)
    cache.update("a.test.", [A], 300, now=0.0)
    _new, evicted = cache.update("a.test.", [B], 300, now=1.0)
    assert evicted == set() and cache.names_of(A) == ["b.test."]


def test_remove_tells_whether_the_address_is_gone_everywhere() -> None:
    cache = NameCache()
    cache.update("a.test.", [A], 10, now=0.0)
    cache.update("b.test.", [A], 10, now=0.0)
    assert cache.remove("a.test.", A) is False
    assert cache.remove("b.test.", A) is True
    assert cache.rows(0.0) == []


def test_persisted_and_loaded(tmp_path: Path) -> None:
    cache = NameCache()
    cache.update("a.test.", [A, V6], 10, now=100.0, endpoint_id=3)
    cache.save(tmp_path / "c.json")
    again = NameCache()
    assert again.load(tmp_path / "c.json")
    assert again.rows(105.0) == cache.rows(105.0)
    assert NameCache().load(tmp_path / "absent.json") is False
    (tmp_path / "bad.json").write_text('{"version": 9, "names": {}}')
    with pytest.raises(ValueError):
        NameCache().load(tmp_path / "bad.json")


def test_clear_returns_what_was_cached() -> None:
    cache = NameCache()
    cache.update("a.test.", [A, B], 10, now=0.0)
    assert cache.clear() == {A, B} and cache.ips() == set()


def test_cap_must_be_positive() -> None:
    with pytest.raises(ValueError):
        NameCache(max_ips=0)
