"""Maglev consistent hashing: the lookup tables external-traffic frontends select backends with.

Each backend walks its own permutation of the table's slots (offset + j * skip mod M, M prime so
every skip visits every slot); backends take turns claiming the next free slot of their
permutation until the table is full. Every turn fills exactly one slot, so the turn order alone
decides the shares: plain round-robin gives each backend M // N or M // N + 1 slots, and a
weighted round-robin over the M turns gives shares proportional to the weights. Because the
permutations depend only on a backend's key and the seed, a change of backends moves few slots.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Sequence
from dataclasses import dataclass

# Primes, so that any skip in [1, M - 1] is coprime with M and a permutation covers every slot.
MAGLEV_SIZES: tuple[int, ...] = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
DEFAULT_SIZE = 16381

_SEED_LIMIT = 1 << 128  # the seed is blake2b's 16-byte salt


@dataclass(frozen=True)
class MaglevBackend:
    """`key` names the backend stably (e.g. "10.0.0.5:8080") and decides its permutation;
    `id` is what the table holds."""

    id: int
    key: str
    weight: int = 1


def _permutation(key: str, seed: int, size: int) -> tuple[int, int]:
    """(offset, skip) of the backend's permutation. blake2b rather than hash(): the table must be
    the same in every process and after every restart, and str hashes are randomized per process."""
    digest = hashlib.blake2b(key.encode(), digest_size=16, salt=seed.to_bytes(16, "little")).digest()
    h1 = int.from_bytes(digest[:8], "little")
    h2 = int.from_bytes(digest[8:], "little")
    return h1 % size, h2 % (size - 1) + 1


def _turns(weights: Sequence[int], count: int) -> list[int]:
    """`count` backend indexes in weighted round-robin order: index i's k-th turn is due at virtual
    time (k + 1) / weights[i], ties going to the lower index. Spreading a heavy backend's turns
    between the others' (rather than giving it w turns in a row) keeps the final, partly-run round
    from favouring whoever sorts first. With equal weights this is plain round-robin."""
    n = len(weights)
    if len(set(weights)) == 1:
        return (list(range(n)) * (count // n + 1))[:count]
    # Correctly-rounded division makes equal ratios equal floats, so the order is deterministic.
    heap = [(1 / w, i, 1) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    turns = [0] * count
    replace = heapq.heapreplace
    for t in range(count):
        _, i, k = heap[0]
        turns[t] = i
        replace(heap, ((k + 1) / weights[i], i, k + 1))
    return turns


def build_table(backends: Sequence[MaglevBackend], size: int = DEFAULT_SIZE, seed: int = 0) -> list[int]:
    """The lookup table: `size` backend ids (an empty list when no backend has a weight above 0).

    Deterministic for the same backends, size and seed, whatever order the backends come in."""
    if size not in MAGLEV_SIZES:
        raise ValueError(f"Maglev table size {size} is not allowed; allowed sizes: "
                         f"{', '.join(map(str, MAGLEV_SIZES))}")
    if not 0 <= seed < _SEED_LIMIT:
        raise ValueError(f"Maglev seed {seed} out of range [0, 2**128)")
    keys = [b.key for b in backends]
    if len(set(keys)) != len(keys):
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"Maglev backend keys must be unique; duplicated: {', '.join(duplicates)}")
    negative = [b.key for b in backends if b.weight < 0]
    if negative:
        raise ValueError(f"Maglev backend weights must be >= 0; negative for: {', '.join(sorted(negative))}")
    # Sorted by key: the turn order (and so the table) must not depend on the caller's order.
    members = sorted((b for b in backends if b.weight > 0), key=lambda b: b.key)
    if not members:
        return []

    ids = [b.id for b in members]
    params = [_permutation(b.key, seed, size) for b in members]
    nexts = [offset for offset, _ in params]  # the next slot each backend's permutation offers
    skips = [skip for _, skip in params]
    taken = bytearray(size)
    table = [0] * size
    # The hot loop, run `size` times: locals only, no calls, a compare instead of a modulo.
    for i in _turns([b.weight for b in members], size):
        c = nexts[i]
        s = skips[i]
        while taken[c]:
            c += s
            if c >= size:
                c -= size
        taken[c] = 1
        table[c] = ids[i]
        c += s
        if c >= size:
            c -= size
        nexts[i] = c
    return table


def table_changes(old: Sequence[int], new: Sequence[int]) -> int:
    """How many entries differ; a table that grew or shrank counts every entry beyond the shorter one."""
    return sum(a != b for a, b in zip(old, new, strict=False)) + abs(len(old) - len(new))
