"""When to try collecting an identity, from the watch on `cilia/identities/refs/` (pure logic).

EtcdIdentityAllocator mirrors the references (a PrefixReflector on `refs/`) and feeds this
trigger with each reference appearing or going and each identity appearing or going (its
`id/` reflector). An identity becomes a candidate when its last reference goes (a node released
it, or a dead node's lease expired and etcd deleted its references) or when it appears with no
reference; it is due `delay` seconds later plus a random share of `jitter` (every node sees the
same deletes: the spread lets the first collector's delete reach the others before they try),
and only if it is then still unreferenced and still an identity. The collection itself stays the
compare-and-swap transaction (`id/N` unchanged and no key under `refs/N/`), so a stale or early
trigger costs a failed transaction, never an identity in use.

Only a count per identity number is kept (10,000 references cost no set of their keys): the
references' reflector is keys-only, so each key reaches the trigger once as a put when it appears
and once as a delete when it goes."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable


class CollectionTrigger:
    def __init__(self, delay: float, jitter: float, clock: Callable[[], float],
                 rand: Callable[[], float] = random.random) -> None:
        self._delay = delay
        self._jitter = jitter
        self._clock = clock
        self._rand = rand
        self._lock = threading.Lock()
        self._counts: dict[int, int] = {}  # identity -> references held
        self._identities: set[int] = set()
        self._due: dict[int, float] = {}  # candidate -> when to try

    # ----- events (the reflectors' threads) -----------------------------------------------------
    def reference_added(self, number: int) -> None:
        with self._lock:
            self._counts[number] = self._counts.get(number, 0) + 1
            self._due.pop(number, None)

    def reference_removed(self, number: int) -> None:
        with self._lock:
            left = self._counts.get(number, 0) - 1
            if left > 0:
                self._counts[number] = left
                return
            self._counts.pop(number, None)
            if number in self._identities:
                self._schedule(number)

    def identity_added(self, number: int) -> None:
        with self._lock:
            if number in self._identities:
                return
            self._identities.add(number)
            if not self._counts.get(number):
                self._schedule(number)

    def identity_removed(self, number: int) -> None:
        with self._lock:
            self._identities.discard(number)
            self._due.pop(number, None)

    def consider(self, numbers: Iterable[int]) -> None:
        """Candidates whatever their count (e.g. every identity once the references were listed)."""
        with self._lock:
            for number in numbers:
                self._identities.add(number)
                if not self._counts.get(number):
                    self._schedule(number)

    # ----- the collector's side -----------------------------------------------------------------
    def due(self) -> list[int]:
        """The candidates whose time came, still unreferenced identities; taken off the list."""
        now = self._clock()
        with self._lock:
            ready = sorted(n for n, at in self._due.items() if at <= now)
            for number in ready:
                del self._due[number]
            return [n for n in ready if n in self._identities and not self._counts.get(n)]

    def next_due(self) -> float | None:
        """Seconds until the next candidate is due (None: none)."""
        with self._lock:
            if not self._due:
                return None
            return max(0.0, min(self._due.values()) - self._clock())

    def referenced(self, number: int) -> int:
        with self._lock:
            return self._counts.get(number, 0)

    def _schedule(self, number: int) -> None:
        self._due.setdefault(number, self._clock() + self._delay + self._rand() * self._jitter)
