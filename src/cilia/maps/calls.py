"""cilia_ingress_calls_v1: endpoint id -> that endpoint's `cil_to_container_peer` program, which
bpf_host and bpf_overlay tail-call to deliver a packet from another node into the pod
(C: bpf/lib/deliver.h). The agent writes an endpoint's slot when it attaches the endpoint and
clears it on detach; a missing slot makes the node's programs fall back to the host-side veth."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from cilia.maps.layout import MapLayout, Scalar

if TYPE_CHECKING:  # a type only: the codecs import without libbpf
    from cilia.bpf import BpfMap

NAME = "cilia_ingress_calls_v1"
MAX_ENTRIES = 65536
LAYOUTS = (MapLayout(NAME, Scalar("__u32", 4), Scalar("__u32", 4)),)  # value: a program fd in, its id out
_U32 = struct.Struct("<I")


class IngressCalls:
    def __init__(self, bpf_map: BpfMap) -> None:
        self.map = bpf_map

    def set(self, endpoint_id: int, program_fd: int) -> None:
        self.map.update(_U32.pack(endpoint_id), _U32.pack(program_fd))

    def clear(self, endpoint_id: int) -> bool:
        return self.map.delete(_U32.pack(endpoint_id))

    def has(self, endpoint_id: int) -> bool:
        return self.map.lookup(_U32.pack(endpoint_id)) is not None
