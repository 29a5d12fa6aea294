"""cilia_metrics_v2: per-CPU packets/bytes per (endpoint, reason, direction) (C: bpf/lib/metrics.h).

v2: the direction is TrafficDirection (0 = ingress, 1 = egress); v1 counted 1 = egress, 2 = ingress.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cilia.maps.layout import CStruct, MapLayout

if TYPE_CHECKING:  # a type only: the codecs import without libbpf
    from cilia.bpf import BpfMap

NAME = "cilia_metrics_v2"
KEY = CStruct("metrics_key", ("endpoint_id", "H"), ("reason", "B"), ("direction", "B"))
VALUE = CStruct("metrics_value", ("packets", "Q"), ("bytes", "Q"))  # one per possible CPU
LAYOUTS = (MapLayout(NAME, KEY, VALUE),)
_KEY = KEY.codec
_VALUE = VALUE.codec


@dataclass(frozen=True)
class MetricsKey:
    endpoint_id: int
    reason: int  # DropReason, 0 = forwarded
    direction: int  # TrafficDirection


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
