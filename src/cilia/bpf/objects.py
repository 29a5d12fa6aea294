"""fd-owning handles: BpfMap, BpfProgram and BpfObject (one loaded ELF object).

A BpfObject owns every fd libbpf created for it; BpfMap/BpfProgram taken from it borrow those
fds. Handles opened from a pin own their fd and close it themselves.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cilia.bpf import libbpf as lb
from cilia.bpf.btf import Btf
from cilia.bpf.errors import BpfError, VerifierError
from cilia.bpf.fs import remove_pins

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
PERCPU_MAP_TYPES = {5, 6, 10, 29}  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE
_VERIFIER_LOG_SIZE = 16 * 1024 * 1024
_STATS_LOG_SIZE = 4096  # BPF_LOG_STATS output is a few lines per program


def _errno() -> int:
    return ctypes.get_errno() or errno.EINVAL


class BpfMap:
    """A map handle. Keys and values are raw bytes; typed codecs live in cilia.maps."""

    def __init__(self, name: str, fd: int, *, owns_fd: bool) -> None:
        info = lb.BpfMapInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        lb.check(lb.lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), f"map {name}: info")
        self.name = name
        self.fd = fd
        self.id = int(info.id)
        self.map_type = int(info.type)
        self.key_size = int(info.key_size)
        self.value_size = int(info.value_size)
        self.max_entries = int(info.max_entries)
        self._owns_fd = owns_fd
        self._ncpus = lb.num_possible_cpus() if self.map_type in PERCPU_MAP_TYPES else 0

    @classmethod
    def from_pin(cls, path: str | os.PathLike[str]) -> BpfMap:
        fd = lb.lib.bpf_obj_get(os.fsencode(path))
        if fd < 0:
            raise BpfError(f"opening pinned map {path}", -fd)
        return cls(Path(path).name, fd, owns_fd=True)

    @property
    def lookup_size(self) -> int:
        """Bytes a lookup returns: per-CPU maps return one 8-byte-aligned value per possible CPU."""
        if self._ncpus:
            return ((self.value_size + 7) // 8 * 8) * self._ncpus
        return self.value_size

    def _key(self, key: bytes) -> ctypes.Array[ctypes.c_char]:
        if len(key) != self.key_size:
            raise BpfError(f"map {self.name}: key is {len(key)} bytes, the map's key is {self.key_size}")
        return ctypes.create_string_buffer(key, len(key))

    def lookup(self, key: bytes) -> bytes | None:
        out = ctypes.create_string_buffer(self.lookup_size)
        if lb.lib.bpf_map_lookup_elem(self.fd, self._key(key), out) < 0:
            err = _errno()
            if err == errno.ENOENT:
                return None
            raise BpfError(f"map {self.name}: lookup", err)
        return out.raw

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        if len(value) != self.lookup_size:
            raise BpfError(f"map {self.name}: value is {len(value)} bytes, the map takes {self.lookup_size}")
        result = lb.lib.bpf_map_update_elem(
            self.fd, self._key(key), ctypes.create_string_buffer(value, len(value)), flags
        )
        lb.check(result, f"map {self.name}: update")

    def delete(self, key: bytes) -> bool:
        if lb.lib.bpf_map_delete_elem(self.fd, self._key(key)) < 0:
            err = _errno()
            if err == errno.ENOENT:
                return False
            raise BpfError(f"map {self.name}: delete", err)
        return True

    def keys(self) -> Iterator[bytes]:
        """Walk the keys. A key deleted mid-walk restarts nothing: the kernel hands the next one."""
        previous: ctypes.Array[ctypes.c_char] | None = None
        current = ctypes.create_string_buffer(self.key_size)
        for _ in range(1 << 26):  # bounded: no map we make has more entries than this
            if lb.lib.bpf_map_get_next_key(self.fd, previous, current) < 0:
                err = _errno()
                if err == errno.ENOENT:
                    return
                raise BpfError(f"map {self.name}: iterating keys", err)
            key = current.raw
            yield key
            previous = ctypes.create_string_buffer(key, len(key))

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def pin(self, path: str | os.PathLike[str]) -> None:
        lb.check(lb.lib.bpf_obj_pin(self.fd, os.fsencode(path)), f"pinning map {self.name} at {path}")

    def close(self) -> None:
        if self._owns_fd and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> BpfMap:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class TestRunResult:
    retval: int
    data_out: bytes
    duration_ns: int


class BpfProgram:
    """A program handle (borrowed from its object, or owned when opened from a pin)."""

    def __init__(self, name: str, fd: int, *, owns_fd: bool) -> None:
        info = lb.BpfProgInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        lb.check(lb.lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), f"program {name}")
        self.name = name
        self.fd = fd
        self.id = int(info.id)
        self.prog_type = int(info.type)
        self._owns_fd = owns_fd

    @classmethod
    def from_pin(cls, path: str | os.PathLike[str]) -> BpfProgram:
        fd = lb.lib.bpf_obj_get(os.fsencode(path))
        if fd < 0:
            raise BpfError(f"opening pinned program {path}", -fd)
        return cls(Path(path).name, fd, owns_fd=True)

    def pin(self, path: str | os.PathLike[str]) -> None:
        lb.check(lb.lib.bpf_obj_pin(self.fd, os.fsencode(path)), f"pinning program {self.name} at {path}")

    def test_run(
        self, data: bytes, *, ctx: bytes | None = None, repeat: int = 1, data_out_size: int = 0
    ) -> TestRunResult:
        """BPF_PROG_RUN: the real program on a real packet, without a device."""
        out_size = data_out_size or len(data) + 256
        data_in = ctypes.create_string_buffer(data, len(data))
        data_out = ctypes.create_string_buffer(out_size)
        opts = lb.BpfTestRunOpts(sz=ctypes.sizeof(lb.BpfTestRunOpts))
        opts.data_in = ctypes.cast(data_in, ctypes.c_void_p)
        opts.data_size_in = len(data)
        opts.data_out = ctypes.cast(data_out, ctypes.c_void_p)
        opts.data_size_out = out_size
        opts.repeat = repeat
        if ctx is not None:
            ctx_buf = ctypes.create_string_buffer(ctx, len(ctx))
            opts.ctx_in = ctypes.cast(ctx_buf, ctypes.c_void_p)
            opts.ctx_size_in = len(ctx)
        lb.check(lb.lib.bpf_prog_test_run_opts(self.fd, ctypes.byref(opts)), f"test run of {self.name}")
        return TestRunResult(int(opts.retval), data_out.raw[: opts.data_size_out], int(opts.duration))

    def close(self) -> None:
        if self._owns_fd and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


class BpfObject:
    """One ELF object, opened, configured (rodata, map sizes) and loaded into the kernel."""

    def __init__(self, handle: int, path: Path) -> None:
        self._handle: int | None = handle
        self.path = path
        self.verifier_stats: dict[str, str] = {}  # program -> the verifier's statistics (open(..., stats=True))

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        pin_root: str | os.PathLike[str] | None = None,
        rodata: dict[str, bytes] | None = None,
        max_entries: dict[str, int] | None = None,
        value_sizes: dict[str, int] | None = None,
        stats: bool = False,
    ) -> BpfObject:
        """Open and load. `rodata` patches `const volatile` globals by name before the load;
        `max_entries` and `value_sizes` resize maps (by name; a name the object lacks is skipped, so
        one setting serves every object); maps declared with LIBBPF_PIN_BY_NAME are reused from, or
        pinned to, `pin_root`. `stats`: keep the verifier's statistics of every program in
        `verifier_stats` (what it processed and how long it took; see `processed_instructions`)."""
        path = Path(path)
        if not path.is_file():
            raise BpfError(f"BPF object {path} does not exist (run `make bpf`)", errno.ENOENT)
        log_buf = ctypes.create_string_buffer(_VERIFIER_LOG_SIZE)
        opts = lb.BpfObjectOpenOpts(sz=ctypes.sizeof(lb.BpfObjectOpenOpts))
        pin_bytes = os.fsencode(pin_root) if pin_root is not None else None
        pin_dir = Path(pin_root) if pin_root is not None else None
        # a pin directory this call creates is removed again if the load fails
        created_pin_dir = pin_dir if pin_dir is not None and not pin_dir.exists() else None
        if pin_root is not None:
            Path(pin_root).mkdir(parents=True, exist_ok=True)
            opts.pin_root_path = pin_bytes
        opts.kernel_log_buf = ctypes.cast(log_buf, ctypes.c_void_p)
        opts.kernel_log_size = _VERIFIER_LOG_SIZE
        handle = lb.lib.bpf_object__open_file(os.fsencode(path), ctypes.byref(opts))
        if not handle:
            error = _errno()
            if created_pin_dir is not None:
                remove_pins(created_pin_dir)
            raise BpfError(f"opening BPF object {path}", error)
        obj = cls(handle, path)
        try:
            if rodata:
                obj._patch_rodata(rodata)
            for map_name, entries in (max_entries or {}).items():
                if obj._has_map(map_name):
                    lb.check(
                        lb.lib.bpf_map__set_max_entries(obj._find_map(map_name), entries),
                        f"{path.name}: setting max entries of {map_name}",
                    )
            for map_name, size in (value_sizes or {}).items():
                if obj._has_map(map_name):
                    lb.check(
                        lb.lib.bpf_map__set_value_size(obj._find_map(map_name), size),
                        f"{path.name}: setting the value size of {map_name}",
                    )
            stats_buffers = obj._request_stats() if stats else {}
            result = lb.lib.bpf_object__load(handle)
            obj.verifier_stats = {name: buf.value.decode(errors="replace") for name, buf in stats_buffers.items()}
            if result < 0:
                log = log_buf.value.decode(errors="replace")
                if log:
                    raise VerifierError(f"loading {path.name}", -result, log)
                raise BpfError(f"loading {path.name}", -result)
        except BaseException:
            obj.close()
            if created_pin_dir is not None:
                remove_pins(created_pin_dir)
            raise
        return obj

    def _request_stats(self) -> dict[str, ctypes.Array[ctypes.c_char]]:
        buffers: dict[str, ctypes.Array[ctypes.c_char]] = {}
        program = lb.lib.bpf_object__next_program(self._require(), None)
        while program:
            name = lb.lib.bpf_program__name(program).decode()
            buffers[name] = ctypes.create_string_buffer(_STATS_LOG_SIZE)
            lb.check(lb.lib.bpf_program__set_log_buf(program, buffers[name], _STATS_LOG_SIZE),
                     f"{self.path.name}: setting the log buffer of {name}")
            lb.check(lb.lib.bpf_program__set_log_level(program, lb.BPF_LOG_STATS),
                     f"{self.path.name}: setting the log level of {name}")
            program = lb.lib.bpf_object__next_program(self._require(), program)
        return buffers

    def processed_instructions(self, program: str) -> int:
        """How many instructions the verifier went through for `program` (its limit is 1,000,000)."""
        found = re.search(r"processed (\d+) insns", self.verifier_stats.get(program, ""))
        if found is None:
            raise BpfError(f"{self.path.name}: no verifier statistics for {program!r} (open with stats=True)")
        return int(found.group(1))

    def _has_map(self, name: str) -> bool:
        return bool(lb.lib.bpf_object__find_map_by_name(self._require(), name.encode()))

    def _find_map(self, name: str) -> int:
        handle = lb.lib.bpf_object__find_map_by_name(self._require(), name.encode())
        if not handle:
            raise BpfError(f"{self.path.name}: no map named {name!r}", errno.ENOENT)
        return int(handle)

    def _patch_rodata(self, values: dict[str, bytes]) -> None:
        """Write each named `.rodata` variable, found through the object's BTF DATASEC."""
        handle = self._require()
        btf = lb.lib.bpf_object__btf(handle)
        if not btf:
            raise BpfError(f"{self.path.name} has no BTF (build it with -g)")
        # libbpf fixed the DATASEC offsets at open (in the ELF file they are still 0)
        variables = Btf(btf, self.path.name, owned=False).datasec(".rodata")
        if not variables:
            raise BpfError(f"{self.path.name} has no .rodata section: declare `const volatile` globals")
        layout = {name: (var.offset, var.size) for name, var in variables.items()}
        rodata_map = None
        current = lb.lib.bpf_object__next_map(handle, None)
        while current:
            map_name = lb.lib.bpf_map__name(current) or b""
            if map_name.endswith(b".rodata"):
                rodata_map = current
                break
            current = lb.lib.bpf_object__next_map(handle, current)
        if rodata_map is None:
            raise BpfError(f"{self.path.name}: libbpf made no .rodata map")
        size = ctypes.c_size_t(0)
        initial = lb.lib.bpf_map__initial_value(rodata_map, ctypes.byref(size))
        image = bytearray(ctypes.string_at(initial, size.value))
        for name, value in values.items():
            if name not in layout:
                raise BpfError(f"{self.path.name}: no .rodata variable {name!r} (have {sorted(layout)})")
            offset, var_size = layout[name]
            if len(value) != var_size:
                raise BpfError(
                    f"{self.path.name}: .rodata variable {name!r} is {var_size} bytes, got {len(value)}: "
                    "the Python struct layout does not match the C one"
                )
            image[offset : offset + var_size] = value
        buffer = ctypes.create_string_buffer(bytes(image), len(image))
        lb.check(lb.lib.bpf_map__set_initial_value(rodata_map, buffer, len(image)), "setting .rodata")

    def _require(self) -> int:
        if self._handle is None:
            raise BpfError(f"BPF object {self.path} is closed")
        return self._handle

    def map(self, name: str) -> BpfMap:
        handle = self._find_map(name)
        return BpfMap(name, lb.lib.bpf_map__fd(handle), owns_fd=False)

    def program(self, name: str) -> BpfProgram:
        handle = lb.lib.bpf_object__find_program_by_name(self._require(), name.encode())
        if not handle:
            raise BpfError(f"{self.path.name}: no program named {name!r}", errno.ENOENT)
        return BpfProgram(name, lb.lib.bpf_program__fd(handle), owns_fd=False)

    def close(self) -> None:
        if self._handle is not None:
            lb.lib.bpf_object__close(self._handle)
            self._handle = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()
