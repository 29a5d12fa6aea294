"""cilia_events_v1 (the ring buffer every program reports into) and cilia_events_lost_v1
(per-CPU count of events it had no room for). C: bpf/lib/events.h; records: cilia.monitor.events."""

from __future__ import annotations

from cilia.maps.layout import MapLayout, Scalar

NAME = "cilia_events_v1"
LOST_NAME = "cilia_events_lost_v1"
LOST_KEY = b"\0\0\0\0"  # its one slot
LAYOUTS = (
    MapLayout(NAME, None, None),  # a ring buffer has no key or value
    MapLayout(LOST_NAME, Scalar("__u32", 4), Scalar("__u64", 8)),  # one u64 per possible CPU
)


def lost_total(raw: bytes) -> int:
    """Sum the per-CPU counters of a lookup of LOST_KEY."""
    return sum(int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8))
