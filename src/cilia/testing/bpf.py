"""BPF scaffolding for kernel tests and benchmarks: a pin directory of one's own, removed with every
pin in it; a ring buffer reader that keeps what it reads and is always closed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from cilia.bpf import BpfMap, RingBufferReader, ensure_bpffs, remove_pins


@contextmanager
def pin_directory(prefix: str = "cilia-test") -> Iterator[Path]:
    """/sys/fs/bpf/<prefix>-<random> (not created yet: BpfObject.open creates it), removed with all
    its pins afterwards, also when the body or the load fails."""
    ensure_bpffs()
    pins = Path(f"/sys/fs/bpf/{prefix}-{uuid.uuid4().hex[:8]}")
    try:
        yield pins
    finally:
        remove_pins(pins)


class RingEvents:
    """Every record of a ring buffer map, in order. A context manager: the reader's mappings and
    epoll descriptor are released on exit, also when the test fails."""

    def __init__(self, ring_map: BpfMap) -> None:
        self.records: list[bytes] = []
        self._reader = RingBufferReader(ring_map, self.records.append)

    def poll(self) -> list[bytes]:
        """Read what the programs have written so far (no waiting); returns every record read yet."""
        self._reader.poll(0)
        return self.records

    def take(self) -> list[bytes]:
        """The records written since the last take, which forgets them."""
        self.poll()
        taken = list(self.records)
        self.records.clear()  # in place: the reader appends to this very list
        return taken

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> RingEvents:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
