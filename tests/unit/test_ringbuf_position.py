"""The ring buffer reader's consumer position is stored in one 8-byte write: another process reading
the word while it advances sees it only go up, never a half-written or cleared value.

The kernel reads the consumer position on every reserve; a value seen as 0 (what struct.pack_into
leaves for an instant: CPython clears the field before it fills it) fails the reserve although the
ring is empty. tests/kernel/test_ringbuf_reader.py shows the loss on the real datapath; this checks
the store itself, without a kernel, as the kernel would see it: from another CPU, mid-write."""

from __future__ import annotations

import mmap
import os
import time

from cilia.bpf.ringbuf import position_word

START = 0x00FF_FFFF_FF00  # the first steps carry into every byte above the lowest
STEP = 176  # one event record


def test_a_concurrent_reader_sees_the_position_only_advance() -> None:
    page = mmap.mmap(-1, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    word = position_word(page)
    word.value = START
    child = os.fork()
    if child == 0:  # the writer: advance as the reader does, for a bounded time
        try:
            value, deadline = START, time.monotonic() + 1.0
            while time.monotonic() < deadline:
                for _ in range(1000):
                    value += STEP
                    word.value = value
        finally:
            os._exit(0)
    try:
        reads, backwards, last = 0, [], START
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline and len(backwards) < 10:
            for _ in range(1000):
                seen = word.value
                if seen < last:
                    backwards.append(hex(seen))
                last = seen
            reads += 1000
    finally:
        os.waitpid(child, 0)
    assert backwards == [], f"{len(backwards)} torn reads in {reads}"
    assert last > START + STEP * 1000  # the writer did run while we read
    del word  # the mapping cannot close while the view exports it
    page.close()
