"""ClientIP session affinity: validity at the timeout boundary and which datapath entries to delete."""

from __future__ import annotations

from cilia.lb.affinity import AffinityEntry, expired, is_valid


def test_valid_up_to_and_including_the_timeout() -> None:
    entry = AffinityEntry(backend_id=7, last_used=1000)
    assert is_valid(entry, now=1000, timeout=60)
    assert is_valid(entry, now=1060, timeout=60)
    assert not is_valid(entry, now=1061, timeout=60)
    assert is_valid(entry, now=990, timeout=60)  # used after the agent read its clock
    assert is_valid(entry, now=1000, timeout=0) and not is_valid(entry, now=1001, timeout=0)


def rev_nat(key: tuple[int, str]) -> int:
    return key[0]


def test_expired_entries() -> None:
    entries = {
        (1, "192.0.2.1"): AffinityEntry(10, last_used=100),  # 1: timeout 50 -> 150 is the last valid second
        (1, "192.0.2.2"): AffinityEntry(10, last_used=99),
        (2, "192.0.2.1"): AffinityEntry(20, last_used=0),  # 2: timeout 10800
    }
    assert expired(entries, rev_nat, {1: 50, 2: 10800}, now=150, live_backends={10, 20}) == [(1, "192.0.2.2")]
    assert expired(entries, rev_nat, {1: 50, 2: 10800}, now=149, live_backends={10, 20}) == []
    assert expired(entries, rev_nat, {1: 50, 2: 10800}, now=10801, live_backends={10, 20}) == list(entries)


def test_frontends_without_affinity() -> None:
    entries = {(1, "a"): AffinityEntry(10, 100), (3, "a"): AffinityEntry(10, 100), (3, "b"): AffinityEntry(11, 100)}
    # Frontend 3 lost its affinity (or is gone): its entries go, fresh or not.
    assert expired(entries, rev_nat, {1: 60}, now=100, live_backends=[10, 11]) == [(3, "a"), (3, "b")]
    assert expired(entries, rev_nat, {}, now=100, live_backends=[10, 11]) == list(entries)


def test_dead_backends() -> None:
    entries = {(1, "a"): AffinityEntry(10, 100), (1, "b"): AffinityEntry(11, 100), (1, "c"): AffinityEntry(12, 100)}
    assert expired(entries, rev_nat, {1: 60}, now=100, live_backends=(10, 12)) == [(1, "b")]
    assert expired(entries, rev_nat, {1: 60}, now=100, live_backends=frozenset()) == list(entries)


def test_nothing_to_do() -> None:
    assert expired({}, rev_nat, {1: 60}, now=100, live_backends={10}) == []
