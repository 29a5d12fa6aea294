"""Reads a BPF ring buffer map: each record is copied out as bytes and handed to a callback.

The ring is read straight from its memory (the kernel's layout: a consumer page we may write, a
producer page and the data area mapped twice in a row so a record never wraps), draining every
committed record in one pass and waiting in epoll when it is empty. libbpf's ring_buffer__poll
would do the same in C but call back into Python through ctypes once per record, which at tens of
thousands of events a second costs the agent most of a core on a small machine.

The consumer position is the one word we write, and the kernel reads it on every reserve: a record
fits only while producer - consumer stays below the ring's size. So it must change in one 8-byte
store. struct.pack_into does not do that (CPython clears the field, then fills it in): a producer
on another CPU could read 0 in between, and once the producer is past one lap of the ring, that
reserve failed with the ring empty, an event lost (1-3 a run at 50,000 events/s, before this was
found). A ctypes c_uint64 over the mapping stores all eight bytes at once (one `mov` on x86-64,
where the store is also ordered after our reads of the records, as the kernel's
smp_load_acquire pairing needs). Reads of the positions and headers (struct.unpack_from) are single
loads and safe.
"""

from __future__ import annotations

import ctypes
import mmap
import select
import struct
from collections.abc import Callable

from cilia.bpf.errors import BpfError
from cilia.bpf.objects import BpfMap

BPF_MAP_TYPE_RINGBUF = 27
_BUSY = 1 << 31  # the producer reserved the record and has not committed it yet
_DISCARD = 1 << 30  # the producer gave the record up
_HEADER = 8  # u32 length (with the two bits above) + u32 page offset
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def position_word(page: mmap.mmap, offset: int = 0) -> ctypes.c_uint64:
    """The 8-byte word at `offset` of a writable mapping, read and written in one access each (its
    `.value`): how the consumer position must change (see the module's docstring)."""
    return ctypes.c_uint64.from_buffer(page, offset)


class RingBufferReader:
    """Poll from one thread; epoll releases the GIL while it waits. `on_record` is called for each
    record, or, given `on_batch` instead, `on_batch` once per drain with the records read (one
    call for thousands of records: what a busy consumer wants)."""

    def __init__(self, ring_map: BpfMap, on_record: Callable[[bytes], None] | None = None,
                 on_batch: Callable[[list[bytes]], None] | None = None) -> None:
        if (on_record is None) == (on_batch is None):
            raise ValueError("give on_record or on_batch")
        if ring_map.map_type != BPF_MAP_TYPE_RINGBUF:
            raise BpfError(f"map {ring_map.name} is not a ring buffer (type {ring_map.map_type})")
        self._on_record = on_record
        self._on_batch = on_batch
        self._size = ring_map.max_entries  # a power of two: positions wrap with a mask
        page = mmap.PAGESIZE
        try:
            self._consumer = mmap.mmap(ring_map.fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self._producer = mmap.mmap(ring_map.fd, page + 2 * self._size, mmap.MAP_SHARED, mmap.PROT_READ,
                                       offset=page)
        except OSError as exc:
            raise BpfError(f"mapping ring buffer {ring_map.name}", exc.errno or 0) from exc
        # The consumer position as one 8-byte word (see the module's docstring: never struct.pack_into).
        self._consumer_pos: ctypes.c_uint64 | None = position_word(self._consumer)
        self._page = page
        self._read = 0
        self._epoll: select.epoll | None = select.epoll()
        self._epoll.register(ring_map.fd, select.EPOLLIN)

    def poll(self, timeout_ms: int) -> int:
        """Hand every committed record to the callback; wait up to timeout_ms when there is none.
        Returns how many records were read."""
        if self._epoll is None:
            raise BpfError("ring buffer reader is closed")
        read = self._drain()
        if read or timeout_ms == 0:
            return read
        try:
            self._epoll.poll(timeout_ms / 1000 if timeout_ms > 0 else -1)
        except InterruptedError:
            return 0
        return self._drain()

    def _drain(self) -> int:
        batch: list[bytes] = []
        try:
            self._copy(batch.append if self._on_record is None else self._on_record)
        finally:
            if batch and self._on_batch is not None:
                self._on_batch(batch)
        return self._read

    def _copy(self, take: Callable[[bytes], None]) -> None:
        consumer, producer, data = self._consumer_pos, self._producer, self._page
        assert consumer is not None  # poll() checked the reader is open
        mask = self._size - 1
        start = position = consumer.value
        self._read = read = 0
        try:
            while True:
                end = _U64.unpack_from(producer, 0)[0]
                if position >= end:
                    return
                while position < end:
                    offset = data + (position & mask)
                    length = _U32.unpack_from(producer, offset)[0]
                    if length & _BUSY:
                        return  # not committed yet: the next poll picks it up
                    size = length & ~(_BUSY | _DISCARD)
                    if not length & _DISCARD:
                        take(producer[offset + _HEADER: offset + _HEADER + size])
                        read += 1
                    position += (size + _HEADER + 7) & ~7
                    if not read & 255:
                        consumer.value = position  # give the space back as we go
        finally:
            self._read = read
            if position != start:
                consumer.value = position

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
            self._consumer_pos = None  # the mapping cannot close while a ctypes view holds it
            self._producer.close()
            self._consumer.close()
