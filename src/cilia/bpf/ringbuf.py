"""Reads a BPF ring buffer map: each record is copied out as bytes and handed to a callback."""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from cilia.bpf import libbpf as lb
from cilia.bpf.errors import BpfError
from cilia.bpf.objects import BpfMap


class RingBufferReader:
    """Poll from one thread; ctypes releases the GIL while libbpf waits in epoll."""

    def __init__(self, ring_map: BpfMap, on_record: Callable[[bytes], None]) -> None:
        self._on_record = on_record
        self._error: BaseException | None = None

        def sample(_ctx: int | None, data: int | None, size: int) -> int:
            try:
                self._on_record(ctypes.string_at(data, size) if data else b"")
            except BaseException as exc:  # an exception must not unwind through C
                self._error = exc
                return -1
            return 0

        self._callback = lb.RingBufferSampleFn(sample)  # keep a reference: C holds the pointer
        handle = lb.lib.ring_buffer__new(ring_map.fd, self._callback, None, None)
        if not handle:
            raise BpfError(f"opening ring buffer {ring_map.name}", ctypes.get_errno())
        self._handle: int | None = handle

    def poll(self, timeout_ms: int) -> int:
        if self._handle is None:
            raise BpfError("ring buffer reader is closed")
        result = int(lb.lib.ring_buffer__poll(self._handle, timeout_ms))
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if result < 0 and result != -4:  # EINTR: a signal, not a failure
            raise BpfError("polling ring buffer", -result)
        return max(result, 0)

    def close(self) -> None:
        if self._handle is not None:
            lb.lib.ring_buffer__free(self._handle)
            self._handle = None
