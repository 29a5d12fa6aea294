"""Traffic direction as the datapath encodes it (C: enum direction, bpf/lib/direction.h).

One encoding for every place that stores it: policy keys (`dir_gen`), metrics keys and event
records. Seen from the pod: ingress enters it, egress leaves it.
"""

from __future__ import annotations

from enum import IntEnum


class TrafficDirection(IntEnum):
    INGRESS = 0
    EGRESS = 1

    @classmethod
    def name_of(cls, value: int, unknown: str = "TRAFFIC_DIRECTION_UNKNOWN") -> str:
        """`INGRESS` / `EGRESS` for a raw value; `unknown` for anything else."""
        try:
            return cls(value).name
        except ValueError:
            return unknown
