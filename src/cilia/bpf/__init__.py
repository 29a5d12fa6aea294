"""The libbpf layer: load objects with load-time config, maps, programs, tc attach, ring buffers."""

from cilia.bpf.errors import BpfError, MapKeyNotFound, VerifierError
from cilia.bpf.fs import ensure_bpffs, remove_pins
from cilia.bpf.libbpf import num_possible_cpus
from cilia.bpf.objects import BPF_ANY, BPF_EXIST, BPF_NOEXIST, BpfMap, BpfObject, BpfProgram, TestRunResult
from cilia.bpf.ringbuf import RingBufferReader
from cilia.bpf.tc import EGRESS, INGRESS, TcDirection, tc_attach, tc_detach, tc_hook_destroy, tc_query

__all__ = [
    "BPF_ANY", "BPF_EXIST", "BPF_NOEXIST", "EGRESS", "INGRESS",
    "BpfError", "BpfMap", "BpfObject", "BpfProgram", "MapKeyNotFound", "RingBufferReader",
    "TcDirection", "TestRunResult", "VerifierError",
    "ensure_bpffs", "num_possible_cpus", "remove_pins", "tc_attach", "tc_detach", "tc_hook_destroy", "tc_query",
]
