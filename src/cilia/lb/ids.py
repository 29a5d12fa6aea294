"""Numeric id allocation for the load balancer: service ids, reverse-NAT ids and backend ids.

Ids end up as BPF map keys, so an id held by a key must stay put while it is held, and an agent
restart must take back exactly the ids the maps already use (`restore`). Freed ids are handed out
again, lowest first, before any never-used one, so the id space stays dense.
Not thread-safe: callers hold their own lock.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class IdExhausted(Exception):
    """Every id of an allocator's range is held."""

    def __init__(self, name: str, first: int, last: int) -> None:
        super().__init__(f"{name}: all {last - first + 1} ids in [{first}, {last}] are in use")
        self.name = name
        self.first = first
        self.last = last


class IdAllocator(Generic[K]):
    """Hands out ids in [first, last] (both included), one per key."""

    def __init__(self, name: str, first: int, last: int) -> None:
        if first > last:
            raise ValueError(f"{name}: empty id range [{first}, {last}]")
        self.name = name
        self.first = first
        self.last = last
        self._ids: dict[K, int] = {}
        self._free: list[int] = []  # a heap: released ids, reused lowest first
        self._next = first  # lowest id never handed out since the last restore

    def allocate(self, key: K) -> int:
        """The key's id: the one it already holds, else the lowest freed id, else the next never-used one."""
        held = self._ids.get(key)
        if held is not None:
            return held
        if self._free:
            new = heapq.heappop(self._free)
        elif self._next <= self.last:
            new = self._next
            self._next += 1
        else:
            raise IdExhausted(self.name, self.first, self.last)
        self._ids[key] = new
        return new

    def release(self, key: K) -> int | None:
        """Free the key's id for reuse; the id it held, or None if it held none."""
        freed = self._ids.pop(key, None)
        if freed is not None:
            heapq.heappush(self._free, freed)
        return freed

    def get(self, key: K) -> int | None:
        return self._ids.get(key)

    def items(self) -> dict[K, int]:
        """A copy of the current assignments."""
        return dict(self._ids)

    def restore(self, assignments: Mapping[K, int]) -> None:
        """Replace the whole state with these exact assignments (what the BPF maps held before a
        restart). The gaps below the highest restored id become the free list. On a duplicate or
        out-of-range id nothing changes and ValueError says which."""
        owners: dict[int, K] = {}
        for key, id_ in assignments.items():
            if not self.first <= id_ <= self.last:
                raise ValueError(f"{self.name}: cannot restore {key!r} -> {id_}: "
                                 f"outside [{self.first}, {self.last}]")
            if id_ in owners:
                raise ValueError(f"{self.name}: cannot restore id {id_} for both {owners[id_]!r} and {key!r}")
            owners[id_] = key
        self._ids = dict(assignments)
        self._next = max(owners) + 1 if owners else self.first
        # Ascending, so already a valid heap.
        self._free = [i for i in range(self.first, self._next) if i not in owners]

    def __len__(self) -> int:
        return len(self._ids)
