"""A decoded mirror of one kvstore prefix: key -> record, fed with the puts and deletes of a
cilia.kvstore.reflector.PrefixReflector (list, then watch; resumes and resyncs are its
business). Values that do not decode are logged with their key and skipped
(a good record that garbage overwrote is dropped: the store no longer holds it), so one bad key
never stops the others. Thread-safe; `on_change` is called after each batch that changed
something, outside the lock."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from cilia.cluster.codec import RecordError
from cilia.kvstore.api import WatchEvent

log = logging.getLogger(__name__)
T = TypeVar("T")
Change = tuple[str, str, bytes]  # ("put" | "delete", key, value)


class RecordTable(Generic[T]):
    def __init__(self, what: str, decode: Callable[[str, bytes], T],
                 on_change: Callable[[], None] | None = None) -> None:
        self.what = what
        self._decode = decode
        self._on_change = on_change
        self._lock = threading.Lock()
        self._records: dict[str, T] = {}
        self._garbage: dict[str, str] = {}  # key -> why it was skipped
        self._synced_flag = False
        self._synced_source: Callable[[], bool] | None = None
        self._revision = 0
        self._revision_source: Callable[[], int] | None = None

    def set_listener(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change

    def apply(self, changes: Iterable[Change], revision: int = 0) -> bool:
        """Apply watch events in order. Returns whether a record changed."""
        changed = False
        with self._lock:
            for kind, key, value in changes:
                changed |= self._apply_locked(kind, key, value)
            self._revision = max(self._revision, revision)
        if changed:
            self._notify()
        return changed

    def handle(self, event: WatchEvent) -> None:
        """The handler of a cilia.kvstore.reflector.PrefixReflector (one event at a time; after a
        compaction the reflector synthesizes the puts and deletes of a full resync)."""
        self.apply([(event.kind, event.key, event.value)], event.mod_revision)

    def bind(self, synced: Callable[[], bool], revision: Callable[[], int]) -> None:
        """Where `synced` and `revision` come from (the reflector feeding this table)."""
        self._synced_source = synced
        self._revision_source = revision

    @property
    def synced(self) -> bool:
        """The table reflects a full listing of the store (at least once)."""
        return self._synced_flag or (self._synced_source is not None and self._synced_source())

    def mark_synced(self) -> None:
        self._synced_flag = True

    @property
    def revision(self) -> int:
        """The last store revision applied."""
        if self._revision_source is not None:
            return self._revision_source()
        return self._revision

    def snapshot(self) -> dict[str, T]:
        with self._lock:
            return dict(self._records)

    def values(self) -> list[T]:
        """The records alone (a list of references: cheaper than a snapshot's dict copy)."""
        with self._lock:
            return list(self._records.values())

    def garbage(self) -> dict[str, str]:
        with self._lock:
            return dict(self._garbage)

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def _apply_locked(self, kind: str, key: str, value: bytes) -> bool:
        if kind == "delete":
            self._garbage.pop(key, None)
            return self._records.pop(key, None) is not None
        try:
            record = self._decode(key, value)
        except RecordError as exc:
            if self._garbage.get(key) != str(exc):  # once per distinct bad value, not per resync
                log.warning("%s: skipping a record that does not decode: %s", self.what, exc)
            self._garbage[key] = str(exc)
            return self._records.pop(key, None) is not None
        self._garbage.pop(key, None)
        if self._records.get(key) == record:
            return False
        self._records[key] = record
        return True

    def _notify(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:
                log.exception("%s: change listener failed", self.what)
