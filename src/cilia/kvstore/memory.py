"""MemoryKv: the KvClient contract in memory, for unit tests of what is built on it.

It keeps etcd's semantics where the logic above depends on them: one revision counter for the
whole store, create/mod revisions per key, leases that expire by a clock the test advances (keys
under an expired lease are deleted, with delete events), an event history watches replay from any
revision not compacted away, `Compacted` for a watch asked to start at or below the compaction
revision. Watch callbacks run on one dispatcher thread, in revision order, as etcd's client does;
`settle()` waits until every queued callback has run.

Faults for tests: `set_down(True)` makes every call raise KvError (etcd unreachable);
`break_watches()` ends every watch with a KvError (a member died under the stream)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

from cilia.kvstore.api import (
    Cancel,
    Cmp,
    Compacted,
    Delete,
    ErrorCallback,
    KeyValue,
    KvError,
    KvStatus,
    Put,
    WatchCallback,
    WatchEvent,
)

log = logging.getLogger(__name__)


class ManualClock:
    """A monotonic clock that moves only when told (lease expiry in unit tests)."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


@dataclass
class _Lease:
    ttl: int
    expires_at: float
    keys: set[str] = field(default_factory=set)


@dataclass
class _Watch:
    prefix: str
    on_events: WatchCallback
    on_error: ErrorCallback
    active: bool = True


class MemoryKv:
    ENDPOINT = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._data: dict[str, KeyValue] = {}
        self._revision = 1  # etcd starts at 1 too: a fresh store has revision 1 and no keys
        self._compacted = 0
        self._history: list[tuple[int, WatchEvent]] = []
        self._pending: list[WatchEvent] = []  # emitted under the lock, queued when it is left
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(0x1000)
        self._watches: list[_Watch] = []
        self._down = False
        self._closed = False
        # dispatcher: callbacks queued under the lock, run outside it in order
        self._queue: deque[Callable[[], None]] = deque()
        self._queue_cond = threading.Condition()
        self._busy = False
        self._dispatcher = threading.Thread(target=self._dispatch, name="cilia-memorykv-watch", daemon=True)
        self._dispatcher.start()

    # ----- faults and test hooks -----------------------------------------------------------------
    def set_down(self, down: bool) -> None:
        with self._locked():
            self._down = down
        if down:
            self.break_watches()

    def break_watches(self) -> None:
        with self._locked():
            watches, self._watches = self._watches, []
            for watch in watches:
                watch.active = False
                self._enqueue(partial(watch.on_error, KvError(f"{self.ENDPOINT}: watch stream broken")))

    def compact(self, revision: int | None = None) -> int:
        """Forget the history up to `revision` (default: the current one), as `etcdctl compact`."""
        with self._locked():
            self._check()
            revision = self._revision if revision is None else min(revision, self._revision)
            self._compacted = max(self._compacted, revision)
            self._history = [(rev, ev) for rev, ev in self._history if rev >= self._compacted]
            return self._compacted

    def expire_leases(self) -> int:
        """Delete the keys of every lease whose time has passed (every call does this first);
        how many leases expired."""
        with self._locked():
            return self._expire_leases_locked()

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until every queued watch callback has run (raises TimeoutError)."""
        deadline = time.monotonic() + timeout
        with self._queue_cond:
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("MemoryKv watch callbacks did not settle")
                self._queue_cond.wait(remaining)

    @property
    def revision(self) -> int:
        with self._locked():
            return self._revision

    @property
    def lease_count(self) -> int:
        with self._locked():
            return len(self._leases)

    # ----- KvClient ------------------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        with self._locked():
            self._check()
            return self._data.get(key)

    def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        with self._locked():
            self._check()
            return [kv for key, kv in sorted(self._data.items()) if key.startswith(prefix)], self._revision

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        with self._locked():
            self._check()
            self._check_lease(lease)
            return self._write(key, value, lease)

    def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        with self._locked():
            self._check()
            if key in self._data:
                return False
            self._check_lease(lease)
            self._write(key, value, lease)
            return True

    def update_if(self, key: str, value: bytes, mod_revision: int, lease: int = 0) -> bool:
        with self._locked():
            self._check()
            current = self._data.get(key)
            if (current.mod_revision if current else 0) != mod_revision:
                return False
            self._check_lease(lease)
            self._write(key, value, lease)
            return True

    def txn(self, compares: Sequence[Cmp], ops: Sequence[Put | Delete]) -> int:
        with self._locked():
            self._check()
            for cmp in compares:
                if cmp.prefix:
                    held = [kv.mod_revision for key, kv in self._data.items() if key.startswith(cmp.key)] or [0]
                else:
                    held = [self._data[cmp.key].mod_revision if cmp.key in self._data else 0]
                if any(revision != cmp.mod_revision for revision in held):
                    return 0
            for op in ops:
                if isinstance(op, Put):
                    self._check_lease(op.lease)
            if not ops:
                return self._revision
            self._revision += 1  # one revision for the whole transaction, as etcd
            for op in ops:
                if isinstance(op, Put):
                    self._write(op.key, op.value, op.lease, bump=False)
                elif op.key in self._data:
                    self._remove(op.key)
            return self._revision

    def delete(self, key: str) -> bool:
        with self._locked():
            self._check()
            if key not in self._data:
                return False
            self._revision += 1
            self._remove(key)
            return True

    def delete_if(self, key: str, mod_revision: int) -> bool:
        with self._locked():
            self._check()
            current = self._data.get(key)
            if current is None or current.mod_revision != mod_revision:
                return False
            self._revision += 1
            self._remove(key)
            return True

    def delete_prefix(self, prefix: str) -> int:
        with self._locked():
            self._check()
            keys = [key for key in self._data if key.startswith(prefix)]
            if keys:
                self._revision += 1  # one transaction: every delete at the same revision
                for key in sorted(keys):
                    self._remove(key)
            return len(keys)

    def grant_lease(self, ttl_seconds: int) -> int:
        with self._locked():
            self._check()
            lease_id = next(self._lease_ids)
            self._leases[lease_id] = _Lease(ttl_seconds, self._clock() + ttl_seconds)
            return lease_id

    def keepalive(self, lease: int) -> bool:
        with self._locked():
            self._check()
            entry = self._leases.get(lease)
            if entry is None:
                return False
            entry.expires_at = self._clock() + entry.ttl
            return True

    def revoke(self, lease: int) -> None:
        with self._locked():
            self._check()
            if lease in self._leases:
                self._drop_lease(lease)

    def watch_prefix(self, prefix: str, start_revision: int, on_events: WatchCallback,
                     on_error: ErrorCallback) -> Cancel:
        with self._locked():
            self._check()
            start_revision = max(start_revision, 1)
            watch = _Watch(prefix, on_events, on_error)
            if start_revision < self._compacted:  # etcd keeps the compaction revision itself
                self._enqueue(partial(on_error, Compacted(self._compacted)))
                return lambda: None
            backlog = [ev for rev, ev in self._history if rev >= start_revision and ev.key.startswith(prefix)]
            by_revision: dict[int, list[WatchEvent]] = {}
            for event in backlog:
                by_revision.setdefault(event.mod_revision, []).append(event)
            for revision, events in sorted(by_revision.items()):
                self._enqueue(partial(self._deliver, watch, events, revision))
            self._watches.append(watch)

        def cancel() -> None:
            with self._locked():
                watch.active = False
                if watch in self._watches:
                    self._watches.remove(watch)
        return cancel

    def status(self) -> KvStatus:
        with self._locked():
            if self._down:
                return KvStatus(False, self.ENDPOINT, error=f"{self.ENDPOINT}: unavailable")
            return KvStatus(True, self.ENDPOINT, "1", "1", self._revision, self._revision, self._revision)

    def close(self) -> None:
        with self._locked():
            self._closed = True
            for watch in self._watches:
                watch.active = False
            self._watches = []
        with self._queue_cond:
            self._queue_cond.notify_all()

    # ----- internals -----------------------------------------------------------------------------
    def _check(self) -> None:
        self._expire_leases_locked()
        if self._down or self._closed:
            raise KvError(f"{self.ENDPOINT}: unavailable")

    def _expire_leases_locked(self) -> int:
        now = self._clock()
        expired = [i for i, lease in self._leases.items() if lease.expires_at <= now]
        for lease_id in expired:
            self._drop_lease(lease_id)
        return len(expired)

    def _check_lease(self, lease: int) -> None:
        if lease and lease not in self._leases:
            raise KvError(f"{self.ENDPOINT}: requested lease {lease:x} not found")

    def _write(self, key: str, value: bytes, lease: int, bump: bool = True) -> int:
        if bump:
            self._revision += 1
        old = self._data.get(key)
        if old is not None and old.lease and old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        created = old.create_revision if old is not None else self._revision
        self._data[key] = KeyValue(key, bytes(value), created, self._revision, lease)
        if lease:
            self._leases[lease].keys.add(key)
        self._emit(WatchEvent("put", key, bytes(value), self._revision))
        return self._revision

    def _remove(self, key: str) -> None:
        old = self._data.pop(key)
        if old.lease and old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        self._emit(WatchEvent("delete", key, b"", self._revision))

    def _drop_lease(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id)
        keys = sorted(k for k in lease.keys if k in self._data and self._data[k].lease == lease_id)
        if keys:
            self._revision += 1
            for key in keys:
                self._remove(key)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The store's lock; on the way out, the events of what happened under it are queued for
        the watches, one callback per watch and revision (etcd sends a transaction's events, a
        prefix delete's, a lease expiry's, in one response)."""
        with self._lock:
            try:
                yield
            finally:
                pending, self._pending = self._pending, []
                for watch in self._watches:
                    by_revision: dict[int, list[WatchEvent]] = {}
                    for event in pending:
                        if event.key.startswith(watch.prefix):
                            by_revision.setdefault(event.mod_revision, []).append(event)
                    for revision, events in sorted(by_revision.items()):
                        self._enqueue(partial(self._deliver, watch, events, revision))

    def _emit(self, event: WatchEvent) -> None:
        self._history.append((event.mod_revision, event))
        self._pending.append(event)

    def _deliver(self, watch: _Watch, events: list[WatchEvent], revision: int) -> None:
        if watch.active:
            watch.on_events(events, revision)

    def _enqueue(self, job: Callable[[], None]) -> None:
        with self._queue_cond:
            self._queue.append(job)
            self._queue_cond.notify_all()

    def _dispatch(self) -> None:
        while True:
            with self._queue_cond:
                while not self._queue:
                    if self._closed:
                        return
                    self._queue_cond.wait(0.5)
                job = self._queue.popleft()
                self._busy = True
            try:
                job()
            except Exception:  # a callback's bug must not stop every other watch
                log.exception("MemoryKv watch callback failed")
            finally:
                with self._queue_cond:
                    self._busy = False
                    self._queue_cond.notify_all()
