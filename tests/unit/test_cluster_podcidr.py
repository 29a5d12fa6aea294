"""The cluster pool: the pure allocator and claims in a kvstore (MemoryKv): distinct per node,
kept across restarts, concurrent claims never overlapping, the kvstore down at start."""

from __future__ import annotations

import ipaddress
import json
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.unit.mutation import FUZZ

from cilia.cluster import codec
from cilia.cluster.model import NodeRecord, RoutingMode
from cilia.cluster.podcidr import PodCidrClaimer, PoolExhausted, first_free
from cilia.kvstore.api import KvError
from cilia.kvstore.memory import MemoryKv

net = ipaddress.ip_network
POOL = net("10.200.0.0/16")


def test_first_free_takes_the_lowest_free_block() -> None:
    assert first_free(POOL, 24, []) == net("10.200.0.0/24")
    assert first_free(POOL, 24, [net("10.200.0.0/24")]) == net("10.200.1.0/24")
    assert first_free(POOL, 24, [net("10.200.1.0/24")]) == net("10.200.0.0/24")
    # a taken range that is bigger than a block, or only partly overlapping one
    assert first_free(POOL, 24, [net("10.200.0.0/23"), net("10.200.2.128/25")]) == net("10.200.3.0/24")
    # a taken range covering the whole pool, and ranges of the other family / outside the pool
    assert first_free(POOL, 24, [net("10.0.0.0/8")]) is None
    assert first_free(POOL, 24, [net("fd00::/8"), net("10.201.0.0/16")]) == net("10.200.0.0/24")


def test_first_free_is_none_when_the_pool_is_full_and_rejects_bad_masks() -> None:
    pool = net("10.0.0.0/30")
    assert first_free(pool, 31, [net("10.0.0.0/31"), net("10.0.0.2/31")]) is None
    with pytest.raises(ValueError):
        first_free(POOL, 8, [])
    with pytest.raises(ValueError):
        first_free(POOL, 33, [])


def test_first_free_jumps_instead_of_enumerating_a_huge_ipv6_pool() -> None:
    pool = net("fd00::/8")
    taken = [net("fd00::/16"), net("fd01::/64")]
    assert first_free(pool, 64, taken) == net("fd01:0:0:1::/64")


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(24, 32)), max_size=12), st.integers(24, 30))
def test_first_free_matches_brute_force(taken_spec: list[tuple[int, int]], mask: int) -> None:
    pool = net("10.0.0.0/24")
    taken = [net((int(pool.network_address) + offset, length), strict=False) for offset, length in taken_spec]
    expected = next((c for c in pool.subnets(new_prefix=mask) if not any(c.overlaps(t) for t in taken)), None)
    assert first_free(pool, mask, taken) == expected


def _claimer(kv: MemoryKv, node: str, tmp_path: Path) -> PodCidrClaimer:
    return PodCidrClaimer(kv, node, tmp_path / node / "podcidr.json")


def test_nodes_claim_distinct_cidrs_and_keep_them_across_restarts(tmp_path: Path) -> None:
    kv = MemoryKv()
    a = _claimer(kv, "a", tmp_path).claim(POOL, 24)
    b = _claimer(kv, "b", tmp_path).claim(POOL, 24)
    assert a != b and not a.overlaps(b)
    assert json.loads(kv.get(codec.podcidr_key(a)).value) == {"node": "a"}  # type: ignore[union-attr]
    assert _claimer(kv, "a", tmp_path).claim(POOL, 24) == a  # restart: the same claim
    # a restart that lost its local cache still finds its claim in the kvstore
    (tmp_path / "b" / "podcidr.json").unlink()
    assert _claimer(kv, "b", tmp_path).claim(POOL, 24) == b
    v6 = _claimer(kv, "a", tmp_path).claim(net("fd00:200::/48"), 64)
    assert v6 == net("fd00:200::/64")


def test_concurrent_claims_never_overlap(tmp_path: Path) -> None:
    kv = MemoryKv()
    results: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = {}
    barrier = threading.Barrier(12)

    def claim(name: str) -> None:
        barrier.wait(5)
        results[name] = _claimer(kv, name, tmp_path).claim(net("10.0.0.0/20"), 24)

    threads = [threading.Thread(target=claim, args=(f"n{i}",)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(results) == 12
    assert len(set(results.values())) == 12
    claims = {codec.decode_claim(e.key, e.value) for e in kv.list_prefix("cilia/podcidrs/")[0]}
    assert claims == {(cidr, name) for name, cidr in results.items()}


def test_pool_exhausted_is_a_clear_error(tmp_path: Path) -> None:
    kv = MemoryKv()
    pool = net("10.0.0.0/23")
    _claimer(kv, "a", tmp_path).claim(pool, 24)
    _claimer(kv, "b", tmp_path).claim(pool, 24)
    with pytest.raises(PoolExhausted, match=r"no free /24 left in the cluster pool 10\.0\.0\.0/23"):
        _claimer(kv, "c", tmp_path).claim(pool, 24)


def test_static_cidrs_of_other_nodes_and_garbage_claims(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kv = MemoryKv()
    static = NodeRecord("s", ipaddress.IPv4Address("192.0.2.9"), None, (net("10.200.0.0/24"),), RoutingMode.NATIVE)
    kv.put(codec.node_key("s"), codec.encode_node(static))
    kv.put("cilia/podcidrs/v4/not-a-cidr", b"{}")
    kv.put("cilia/podcidrs/v4/10.200.1.0_24", b"\xff garbage")
    # s's static CIDR is taken, and so is the CIDR a garbage value sits on (its key names it)
    assert _claimer(kv, "a", tmp_path).claim(POOL, 24) == net("10.200.2.0/24")
    assert "cilia/podcidrs/v4/not-a-cidr" in caplog.text
    assert "cilia/podcidrs/v4/10.200.1.0_24" in caplog.text


def test_kvstore_down_at_start_uses_the_cached_claim_and_confirms_later(tmp_path: Path) -> None:
    kv = MemoryKv()
    first = _claimer(kv, "a", tmp_path).claim(POOL, 24)
    kv.set_down(True)
    claimer = _claimer(kv, "a", tmp_path)
    assert claimer.claim(POOL, 24) == first
    with pytest.raises(KvError, match="no claim cached"):
        _claimer(kv, "fresh", tmp_path).claim(POOL, 24)
    # a different mask makes the cached claim useless: a clear error, not a wrong CIDR
    with pytest.raises(KvError):
        claimer.claim(POOL, 25)
    kv.set_down(False)
    kv.delete(codec.podcidr_key(first))  # someone removed the claim while we were offline
    assert claimer.confirm(first)
    assert kv.get(codec.podcidr_key(first)) is not None
    kv.put(codec.podcidr_key(first), codec.encode_claim("intruder"))
    assert not claimer.confirm(first)


def test_a_damaged_cache_is_ignored(tmp_path: Path) -> None:
    kv = MemoryKv()
    first = _claimer(kv, "a", tmp_path).claim(POOL, 24)
    (tmp_path / "a" / "podcidr.json").write_text("{not json")
    assert _claimer(kv, "a", tmp_path).claim(POOL, 24) == first  # etcd still has the claim
    (tmp_path / "a" / "podcidr.json").write_text("[1, 2]")
    kv.set_down(True)
    with pytest.raises(KvError, match="no claim cached"):
        _claimer(kv, "a", tmp_path).claim(POOL, 24)
