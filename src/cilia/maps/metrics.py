"""cilia_metrics_v1: per-CPU packets/bytes per (endpoint, reason, direction) (C: struct metrics_key/value)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cilia.bpf import BpfMap

NAME = "cilia_metrics_v1"
_KEY = struct.Struct("<HBB")
_VALUE = struct.Struct("<QQ")
DIRECTIONS = {1: "egress", 2: "ingress"}


@dataclass(frozen=True)
class MetricsKey:
    endpoint_id: int
    reason: int
    direction: int


class MetricsMap:
    def __init__(self, bpf_map: BpfMap) -> None:
        self.map = bpf_map

    def totals(self) -> dict[MetricsKey, tuple[int, int]]:
        """Sum the per-CPU slots: (packets, bytes) per key."""
        result: dict[MetricsKey, tuple[int, int]] = {}
        stride = (self.map.value_size + 7) // 8 * 8
        for raw_key, raw_value in self.map.items():
            key = MetricsKey(*_KEY.unpack(raw_key))
            packets = total_bytes = 0
            for offset in range(0, len(raw_value), stride):
                p, b = _VALUE.unpack_from(raw_value, offset)
                packets += p
                total_bytes += b
            result[key] = (packets, total_bytes)
        return result
