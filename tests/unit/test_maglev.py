"""Maglev tables: balance, disruption on backend changes, determinism, weights, argument checks."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections import Counter

import pytest

from cilia.lb.maglev import DEFAULT_SIZE, MAGLEV_SIZES, MaglevBackend, build_table, table_changes


def backends(count: int, start: int = 0) -> list[MaglevBackend]:
    return [MaglevBackend(i, f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:8080") for i in range(start, start + count)]


@pytest.mark.parametrize(("size", "count"), [(DEFAULT_SIZE, 100), (65521, 500)])
def test_every_backend_within_one_percent_of_its_share(size: int, count: int) -> None:
    table = build_table(backends(count), size)
    assert len(table) == size
    shares = Counter(table)
    assert set(shares) == set(range(count))
    ideal = size / count
    worst = max(abs(n - ideal) for n in shares.values())
    assert worst <= 0.01 * ideal, f"a backend is {worst:.1f} entries off the ideal {ideal:.1f}"


# Maglev does not guarantee minimal disruption: a displaced backend's next preference may be
# another backend's slot. The excess shrinks as size / backends grows; measured with these keys:
# about 1.6x the ideal at 65521 / 100 and 2.4x at 16381 / 100.
@pytest.mark.parametrize(("size", "bound"), [(65521, 2.0), (DEFAULT_SIZE, 3.0)])
def test_adding_a_backend_moves_about_its_share(size: int, bound: float) -> None:
    before = build_table(backends(100), size)
    after = build_table([*backends(100), MaglevBackend(100, "10.0.1.0:8080")], size)
    ideal = 1 / 101
    gained = Counter(after)[100]
    assert gained == pytest.approx(size * ideal, rel=0.01)  # the newcomer gets its fair share
    moved = table_changes(before, after)
    assert gained <= moved < bound * ideal * size, f"{moved / size:.4f} of the entries changed, ideal {ideal:.4f}"


def test_removing_a_backend_moves_its_entries_and_a_small_share_more() -> None:
    size = 65521
    before = build_table(backends(100), size)
    after = build_table([b for b in backends(100) if b.id != 42], size)
    assert 42 not in after
    own = [i for i, got in enumerate(before) if got == 42]
    assert all(after[i] != 42 for i in own)
    others_moved = sum(1 for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b and a != 42)
    assert others_moved / size < 1 / 100, f"{others_moved} entries of surviving backends moved"


def test_deterministic_for_the_same_inputs_and_seed() -> None:
    members = backends(50)
    table = build_table(members, 4093, seed=7)
    assert build_table(list(members), 4093, seed=7) == table
    shuffled = list(members)
    random.Random(1).shuffle(shuffled)
    assert build_table(shuffled, 4093, seed=7) == table
    assert build_table(list(reversed(members)), 4093, seed=7) == table
    other = build_table(members, 4093, seed=8)
    assert table_changes(table, other) > 4093 // 2  # a new seed reshuffles, not just nudges


def test_same_table_in_other_processes() -> None:
    # Agents on different nodes, and one agent across restarts, must agree: no randomized hash().
    members = [MaglevBackend(1, "a"), MaglevBackend(2, "b"), MaglevBackend(3, "c")]
    code = f"from cilia.lb.maglev import MaglevBackend, build_table; print(build_table({members!r}, 251, seed=3))"
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        assert run.stdout == f"{build_table(members, 251, seed=3)}\n"


def test_weights_are_honoured() -> None:
    size = DEFAULT_SIZE
    members = [MaglevBackend(i, f"b{i}", weight=2 if i < 10 else 1) for i in range(20)]
    shares = Counter(build_table(members, size))
    total_weight = 10 * 2 + 10 * 1
    for b in members:
        ideal = size * b.weight / total_weight
        assert abs(shares[b.id] - ideal) <= 0.02 * ideal, f"{b}: {shares[b.id]} entries, ideal {ideal:.1f}"
    heavy = sum(shares[i] for i in range(10))
    light = sum(shares[i] for i in range(10, 20))
    assert heavy / light == pytest.approx(2, rel=0.02)


def test_weight_zero_is_left_out() -> None:
    members = [MaglevBackend(1, "a"), MaglevBackend(2, "b", weight=0), MaglevBackend(3, "c")]
    table = build_table(members, 1021)
    assert set(table) == {1, 3}
    assert build_table([MaglevBackend(2, "b", weight=0)], 1021) == []


def test_single_backend_fills_the_table() -> None:
    assert build_table([MaglevBackend(9, "only")], 251) == [9] * 251


def test_empty_gives_empty() -> None:
    assert build_table([]) == []


@pytest.mark.parametrize("size", [0, 250, 16384, 65537])
def test_bad_size_is_rejected(size: int) -> None:
    with pytest.raises(ValueError, match=rf"size {size} .*16381"):
        build_table(backends(3), size)


def test_bad_backends_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicated: a"):
        build_table([MaglevBackend(1, "a"), MaglevBackend(2, "a")], 251)
    with pytest.raises(ValueError, match="negative"):
        build_table([MaglevBackend(1, "a", weight=-1)], 251)
    with pytest.raises(ValueError, match="seed"):
        build_table([MaglevBackend(1, "a")], 251, seed=-1)


def test_sizes_are_the_documented_primes() -> None:
    assert DEFAULT_SIZE in MAGLEV_SIZES
    for m in MAGLEV_SIZES:
        assert all(m % d for d in range(2, int(m**0.5) + 1)), m


def test_table_changes() -> None:
    assert table_changes([1, 2, 3], [1, 2, 3]) == 0
    assert table_changes([1, 2, 3], [1, 4, 5]) == 2
    assert table_changes([1, 2], [1, 2, 3]) == 1


def test_fast_enough() -> None:
    # Budget from the brief: well under 2 s on a slow core; this machine does it in a tenth of that.
    members = backends(1000)
    start = time.perf_counter()
    build_table(members, 65521)
    assert time.perf_counter() - start < 2.0
