"""ServerStatus' `flows_rate` as Hubble computes it (pkg/hubble/observer getFlowRate): the flows
in the buffer whose time is within the last minute, per second of that minute, or per second
since the oldest buffered flow when every buffered flow is that recent (a young agent, a quiet
one). Reading the ring backwards stops at the first older flow; cilia's ring is in time order,
so a binary search over its entries finds the same place while building O(log n) of them (an
entry is built once and kept, so this costs the next reader nothing)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

WINDOW_NS = 60 * 10**9


class Entry(Protocol):
    def get(self) -> Mapping[str, Any] | None: ...


def flow_time_ns(flow: Mapping[str, Any]) -> int | None:
    """A flow dict's RFC 3339 `time` in nanoseconds since the epoch (None: none, unparseable)."""
    text = flow.get("time")
    if not isinstance(text, str) or not text:
        return None
    whole, dot, rest = text.partition(".")
    fraction, zone = rest, ""
    if dot:  # datetime keeps microseconds only: take the nanoseconds apart
        digits = len(rest) - len(rest.lstrip("0123456789"))
        fraction, zone = rest[:digits], rest[digits:]
    try:
        seconds = datetime.fromisoformat(whole + (zone if dot else "")).timestamp()
    except ValueError:
        return None
    return int(seconds) * 10**9 + int((fraction + "000000000")[:9] if dot else 0)


def flows_rate(entries: Sequence[Entry], now_ns: int, window_ns: int = WINDOW_NS,
               time_of: Callable[[Mapping[str, Any]], int | None] = flow_time_ns) -> float:
    """Flows per second over the last `window_ns` of the buffered `entries` (oldest first)."""
    def at(index: int) -> int | None:
        # an entry that does not build (an undecodable record) takes its next neighbour's time
        for entry in entries[index:]:
            flow = entry.get()
            if flow is not None and (stamp := time_of(flow)) is not None:
                return stamp
        return None

    horizon = now_ns - window_ns
    low, high = 0, len(entries)
    while low < high:  # the first entry within the window
        middle = (low + high) // 2
        stamp = at(middle)
        if stamp is not None and stamp < horizon:
            low = middle + 1
        else:
            high = middle
    count = len(entries) - low
    since = horizon
    if count and low == 0:  # the whole buffer is within the window: since its oldest flow
        oldest = at(0)
        since = oldest if oldest is not None else horizon
    elapsed = (now_ns - since) / 1e9
    return count / elapsed if elapsed > 0 else 0.0
