"""Raw ctypes bindings to libbpf.so.1: prototypes and the option structs we pass to it.

Only this module knows C signatures. libbpf 1.x returns -errno (and sets errno) on failure;
callers turn that into BpfError via `check()`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

from cilia.bpf.errors import BpfError

_path = ctypes.util.find_library("bpf") or "libbpf.so.1"
lib = ctypes.CDLL(_path, use_errno=True)

c_void_p = ctypes.c_void_p
c_int = ctypes.c_int
c_uint32 = ctypes.c_uint32
c_size_t = ctypes.c_size_t
c_char_p = ctypes.c_char_p


class BpfObjectOpenOpts(ctypes.Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("object_name", c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", c_char_p),
        ("_attach_prog_fd", c_uint32),
        ("kconfig", c_char_p),
        ("btf_custom_path", c_char_p),
        ("kernel_log_buf", c_void_p),
        ("kernel_log_size", c_size_t),
        ("kernel_log_level", c_uint32),
    ]


class BpfTcHook(ctypes.Structure):
    _fields_ = [("sz", c_size_t), ("ifindex", c_int), ("attach_point", c_int), ("parent", c_uint32)]


class BpfTcOpts(ctypes.Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("prog_fd", c_int),
        ("flags", c_uint32),
        ("prog_id", c_uint32),
        ("handle", c_uint32),
        ("priority", c_uint32),
    ]


class BpfTestRunOpts(ctypes.Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("retval", c_uint32),
        ("repeat", c_int),
        ("duration", c_uint32),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


class BpfMapInfo(ctypes.Structure):
    """The head of the kernel's struct bpf_map_info (uapi); the kernel fills what fits."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("key_size", c_uint32),
        ("value_size", c_uint32),
        ("max_entries", c_uint32),
        ("map_flags", c_uint32),
        ("name", ctypes.c_char * 16),
    ]


class BpfProgInfo(ctypes.Structure):
    """The head of the kernel's struct bpf_prog_info (uapi)."""

    _fields_ = [("type", c_uint32), ("id", c_uint32), ("tag", ctypes.c_uint8 * 8)]


class BtfType(ctypes.Structure):
    _fields_ = [("name_off", c_uint32), ("info", c_uint32), ("size_or_type", c_uint32)]


class BtfVarSecinfo(ctypes.Structure):
    _fields_ = [("type", c_uint32), ("offset", c_uint32), ("size", c_uint32)]


class BtfMember(ctypes.Structure):
    _fields_ = [("name_off", c_uint32), ("type", c_uint32), ("offset", c_uint32)]


class BtfEnum(ctypes.Structure):
    _fields_ = [("name_off", c_uint32), ("val", ctypes.c_int32)]


class BtfEnum64(ctypes.Structure):
    _fields_ = [("name_off", c_uint32), ("val_lo32", c_uint32), ("val_hi32", c_uint32)]


class BtfArray(ctypes.Structure):
    _fields_ = [("type", c_uint32), ("index_type", c_uint32), ("nelems", c_uint32)]


RingBufferSampleFn = ctypes.CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)


def _proto(name: str, restype: Any, *argtypes: Any) -> None:
    function = getattr(lib, name)
    function.restype = restype
    function.argtypes = list(argtypes)


_proto("bpf_object__open_file", c_void_p, c_char_p, ctypes.POINTER(BpfObjectOpenOpts))
_proto("bpf_object__load", c_int, c_void_p)
_proto("bpf_object__close", None, c_void_p)
_proto("bpf_object__btf", c_void_p, c_void_p)
_proto("bpf_object__next_map", c_void_p, c_void_p, c_void_p)
_proto("bpf_object__next_program", c_void_p, c_void_p, c_void_p)
_proto("bpf_object__find_map_by_name", c_void_p, c_void_p, c_char_p)
_proto("bpf_object__find_program_by_name", c_void_p, c_void_p, c_char_p)
_proto("bpf_map__name", c_char_p, c_void_p)
_proto("bpf_map__fd", c_int, c_void_p)
_proto("bpf_map__set_max_entries", c_int, c_void_p, c_uint32)
_proto("bpf_map__set_value_size", c_int, c_void_p, c_uint32)
_proto("bpf_map__initial_value", c_void_p, c_void_p, ctypes.POINTER(c_size_t))
_proto("bpf_map__set_initial_value", c_int, c_void_p, c_void_p, c_size_t)
_proto("bpf_program__name", c_char_p, c_void_p)
_proto("bpf_program__fd", c_int, c_void_p)
_proto("bpf_program__set_log_buf", c_int, c_void_p, c_void_p, c_size_t)
_proto("bpf_program__set_log_level", c_int, c_void_p, c_uint32)
_proto("btf__find_by_name_kind", ctypes.c_int32, c_void_p, c_char_p, c_uint32)
_proto("btf__type_by_id", ctypes.POINTER(BtfType), c_void_p, c_uint32)
_proto("btf__name_by_offset", c_char_p, c_void_p, c_uint32)
_proto("btf__parse_elf", c_void_p, c_char_p, c_void_p)
_proto("btf__free", None, c_void_p)
_proto("btf__type_cnt", c_uint32, c_void_p)
_proto("btf__resolve_size", ctypes.c_int64, c_void_p, c_uint32)
_proto("btf__resolve_type", c_int, c_void_p, c_uint32)
_proto("bpf_map_update_elem", c_int, c_int, c_void_p, c_void_p, ctypes.c_uint64)
_proto("bpf_map_lookup_elem", c_int, c_int, c_void_p, c_void_p)
_proto("bpf_map_delete_elem", c_int, c_int, c_void_p)
_proto("bpf_map_get_next_key", c_int, c_int, c_void_p, c_void_p)
_proto("bpf_obj_pin", c_int, c_int, c_char_p)
_proto("bpf_obj_get", c_int, c_char_p)
_proto("bpf_obj_get_info_by_fd", c_int, c_int, c_void_p, ctypes.POINTER(c_uint32))
_proto("bpf_prog_test_run_opts", c_int, c_int, ctypes.POINTER(BpfTestRunOpts))
_proto("bpf_prog_attach", c_int, c_int, c_int, c_uint32, ctypes.c_uint)
_proto("bpf_prog_detach2", c_int, c_int, c_int, c_uint32)
_proto("bpf_prog_query", c_int, c_int, c_uint32, c_uint32, ctypes.POINTER(c_uint32), ctypes.POINTER(c_uint32),
       ctypes.POINTER(c_uint32))
_proto("bpf_tc_hook_create", c_int, ctypes.POINTER(BpfTcHook))
_proto("bpf_tc_hook_destroy", c_int, ctypes.POINTER(BpfTcHook))
_proto("bpf_tc_attach", c_int, ctypes.POINTER(BpfTcHook), ctypes.POINTER(BpfTcOpts))
_proto("bpf_tc_detach", c_int, ctypes.POINTER(BpfTcHook), ctypes.POINTER(BpfTcOpts))
_proto("bpf_tc_query", c_int, ctypes.POINTER(BpfTcHook), ctypes.POINTER(BpfTcOpts))
_proto("ring_buffer__new", c_void_p, c_int, RingBufferSampleFn, c_void_p, c_void_p)
_proto("ring_buffer__poll", c_int, c_void_p, c_int)
_proto("ring_buffer__free", None, c_void_p)
_proto("libbpf_num_possible_cpus", c_int)
_proto("libbpf_set_print", c_void_p, c_void_p)

# libbpf prints warnings to stderr by default; we report through exceptions and logs instead.
lib.libbpf_set_print(None)

BPF_LOG_STATS = 4  # the verifier reports what it processed, even for a program it accepts

BTF_KIND_INT = 1
BTF_KIND_PTR = 2
BTF_KIND_ARRAY = 3
BTF_KIND_STRUCT = 4
BTF_KIND_UNION = 5
BTF_KIND_ENUM = 6
BTF_KIND_TYPEDEF = 8
BTF_KIND_VOLATILE = 9
BTF_KIND_CONST = 10
BTF_KIND_VAR = 14
BTF_KIND_DATASEC = 15
BTF_KIND_ENUM64 = 19


def check(result: int, what: str) -> int:
    """libbpf returns -errno on failure; raise BpfError naming `what`."""
    if result < 0:
        raise BpfError(what, -result)
    return result


def num_possible_cpus() -> int:
    return check(lib.libbpf_num_possible_cpus(), "counting possible CPUs")
