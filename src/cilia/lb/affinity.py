"""ClientIP session affinity, control-plane side: which datapath affinity entries are still valid.

The datapath keeps, per (frontend rev-NAT id, client), the backend it chose and when (seconds,
CLOCK_MONOTONIC) the entry was last used; the agent garbage-collects entries with `expired`.
cilia.maps.lb reads and deletes them as the typed `AffinityKey` / `AffinityEntry` below.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from cilia.lb.model import IPAddress

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class AffinityKey:
    """Which client a frontend's affinity entry is for: its address (per-packet path), or the
    cookie of its network namespace (socket path, where the source address is not known yet)."""

    rev_nat_id: int
    client: IPAddress | int  # an int is a netns cookie

    def __str__(self) -> str:
        return f"netns:{self.client}" if isinstance(self.client, int) else str(self.client)


@dataclass(frozen=True)
class AffinityEntry:
    backend_id: int
    last_used: int  # seconds, CLOCK_MONOTONIC


def is_valid(entry: AffinityEntry, now: int, timeout: int) -> bool:
    """Valid while at most `timeout` seconds have passed since last use (the boundary included).
    A `last_used` after `now` counts as valid: the datapath may touch an entry after the agent
    read the clock."""
    return now - entry.last_used <= timeout


def expired(
    entries: Mapping[K, AffinityEntry],
    rev_nat_of: Callable[[K], int],
    timeouts: Mapping[int, int],
    now: int,
    live_backends: Collection[int],
) -> list[K]:
    """Keys to delete, in `entries` order: entries past their frontend's timeout, entries of
    frontends that no longer have affinity (rev-NAT id not in `timeouts`), and entries pointing
    at a backend id not in `live_backends`."""
    live = live_backends if isinstance(live_backends, set | frozenset) else frozenset(live_backends)
    doomed: list[K] = []
    for key, entry in entries.items():
        timeout = timeouts.get(rev_nat_of(key))
        if timeout is None or entry.backend_id not in live or not is_valid(entry, now, timeout):
            doomed.append(key)
    return doomed
