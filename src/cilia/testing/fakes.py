"""In-memory stand-ins for BPF maps, for unit tests of code that talks to the kernel through maps.

FakeMap has the part of BpfMap's interface the map codecs use (lookup, update, delete, keys, items),
over a dict; it counts writes and, when given a shared log, records every write in order across
maps (to check the order in which several maps are written)."""

from __future__ import annotations

from collections.abc import Iterator

MapLog = list[tuple[str, str, bytes]]  # (map name, "update" | "delete", key)


class FakeMap:
    def __init__(self, name: str = "fake", log: MapLog | None = None) -> None:
        self.name = name
        self.log = log
        self.data: dict[bytes, bytes] = {}
        self.writes = 0

    def lookup(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        self._record("update", key)
        self.data[key] = value

    def delete(self, key: bytes) -> bool:
        self._record("delete", key)
        return self.data.pop(key, None) is not None

    def keys(self) -> Iterator[bytes]:
        return iter(list(self.data))

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        # A snapshot: callers delete while they iterate, as they may with a real map's items().
        return iter(list(self.data.items()))

    def _record(self, operation: str, key: bytes) -> None:
        self.writes += 1
        if self.log is not None:
            self.log.append((self.name, operation, key))
