"""PrefixReflector: a local copy of every key under one prefix, kept current by list + watch.

It lists the prefix, then watches from the listed revision + 1. When the watch breaks (a member
died, the network went away), it watches again from the last revision it has seen, so nothing is
missed and nothing is listed again. When the store says that revision is compacted away, it lists
again and compares the result with its copy: what changed meanwhile reaches the handler as
synthesized puts and deletes, as if it had been watched. Retries back off (0.1 s doubling up to
`max_backoff`), so a store that is down costs a request a few seconds, not a busy loop.

Values are passed through as bytes: the owner decodes them and logs and skips what it cannot read
(garbage written by hand must not stop the reflector). A handler that raises is logged with the
key; the reflector carries on.

`initial` seeds the copy (from an owner's local cache file), so the first list after a restart
yields only what changed while the agent was away, deletes included.

`keep_values=False` keeps a 16-byte fingerprint (BLAKE2b) of each value instead of the value, for
owners that hold the decoded records themselves (the cluster's node and ipcache tables: 10,000
remote endpoints' JSON would otherwise be held twice). Changes are detected the same way; `items()`
and `get()` then return the fingerprints, and a delete event's value is the fingerprint too.

`keys_only=True` keeps no value at all, for owners that care which keys exist (the identity
references: `cilia/identities/refs/<N>/<node>` -> `{}`): a put reaches the owner only when its key
is new, and a delete event's value is empty."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping

from cilia.kvstore.api import Cancel, Compacted, KvClient, KvError, WatchEvent

log = logging.getLogger(__name__)

EventHandler = Callable[[WatchEvent], None]
_HEALTHY_WATCH = 30.0  # a watch that lived this long without an event worked too


class PrefixReflector:
    def __init__(self, kv: KvClient, prefix: str, handler: EventHandler,
                 initial: Mapping[str, bytes] | None = None, name: str = "",
                 min_backoff: float = 0.1, max_backoff: float = 5.0, keep_values: bool = True,
                 keys_only: bool = False) -> None:
        self.kv = kv
        self.prefix = prefix
        self.name = name or prefix
        self._handler = handler
        self._lock = threading.RLock()
        self._moved = threading.Condition(self._lock)  # the revision moved on
        self._held: Callable[[bytes], bytes] = _nothing if keys_only else _same if keep_values else _fingerprint
        self._cache: dict[str, bytes] = {key: self._held(value) for key, value in (initial or {}).items()}
        self._revision = 0  # the last store revision this copy reflects (0: never listed)
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._wake = threading.Event()  # the current watch ended
        self._generation = 0
        self._watch_error: Exception | None = None
        self._delivered = False  # the current watch has delivered something (it works)
        self._thread: threading.Thread | None = None
        self.last_error = ""
        self.resyncs = 0  # full lists after the first (compactions), for tests and status
        self.resumes = 0  # watches restarted from a revision

    # ----- reading -------------------------------------------------------------------------------
    @property
    def synced(self) -> bool:
        """True once the first list has been applied (the copy then reflects the store)."""
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    @property
    def revision(self) -> int:
        with self._lock:
            return self._revision

    def wait_revision(self, revision: int, timeout: float) -> bool:
        """Wait until the copy reflects store revision `revision` (its handler has run for every
        change up to it); False after `timeout`."""
        with self._moved:
            return self._moved.wait_for(lambda: self._revision >= revision, timeout)

    def items(self) -> dict[str, bytes]:
        with self._lock:
            return dict(self._cache)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._cache.get(key)

    # ----- running -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"cilia-reflector-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        backoff = self._min_backoff
        need_list = True
        while not self._stop.is_set():
            cancel: Cancel | None = None
            started = time.monotonic()
            self._delivered = False
            try:
                if need_list:
                    self._list()
                    need_list = False
                    backoff = self._min_backoff  # the store answered
                cancel = self._watch()
                self._wake.wait()
                error = self._watch_error
            except KvError as exc:
                error = exc
            finally:
                if cancel is not None:
                    cancel()
            if self._stop.is_set():
                break
            if self._delivered or time.monotonic() - started > _HEALTHY_WATCH:
                backoff = self._min_backoff  # the watch worked: the next failure starts over short
            if isinstance(error, Compacted):
                log.warning("reflector %s: revision %d compacted (store at %d): full resync",
                            self.name, self._revision, error.compact_revision)
                need_list = True
                continue  # at once: the store answers, it only forgot history
            if error is not None:
                text = str(error)
                # the same failure again (etcd still down) is not news: once at warning level
                level = logging.DEBUG if text == self.last_error else logging.WARNING
                self.last_error = text
                log.log(level, "reflector %s: %s; retrying in %.1f s from revision %d",
                        self.name, text, backoff, self._revision)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self._max_backoff)
            if not need_list:
                self.resumes += 1

    def _list(self) -> None:
        kvs, revision = self.kv.list_prefix(self.prefix)
        listed = {kv.key: kv.value for kv in kvs}
        revisions = {kv.key: kv.mod_revision for kv in kvs}
        events: list[WatchEvent] = []
        with self._lock:
            for key, old in list(self._cache.items()):
                if key not in listed:
                    del self._cache[key]
                    events.append(WatchEvent("delete", key, old, revision))
            for key, value in listed.items():
                held = self._held(value)
                if self._cache.get(key) != held:
                    self._cache[key] = held
                    events.append(WatchEvent("put", key, value, revisions[key]))
            if self._synced.is_set():
                self.resyncs += 1
        for event in events:
            self._call(event)
        with self._moved:
            self._revision = revision
            self._moved.notify_all()
        if self.last_error:
            log.info("reflector %s: listed again at revision %d", self.name, revision)
        self.last_error = ""
        self._synced.set()

    def _watch(self) -> Cancel:
        with self._lock:
            self._generation += 1
            generation = self._generation
            start = self._revision + 1
        self._watch_error = None
        self._wake.clear()

        def on_events(events: list[WatchEvent], revision: int) -> None:
            if generation != self._generation:
                return  # a late callback of a watch already replaced
            self._delivered = True
            if self.last_error:
                log.info("reflector %s: watching again from revision %d", self.name, start)
                self.last_error = ""
            for event in events:
                self._apply(event)
            # an answer with events stands for what it carries, not for its header: the header is the
            # store's revision when it was sent, and events up to it may still be on their way (a batch
            # split, a watcher catching up), so resuming from the header could skip them. Only an
            # answer without events (a progress notification) vouches for its header revision.
            seen = max((event.mod_revision for event in events), default=revision)
            with self._moved:
                self._revision = max(self._revision, seen)
                self._moved.notify_all()

        def on_error(exc: Exception) -> None:
            if generation != self._generation:
                return
            self._watch_error = exc
            self._wake.set()

        return self.kv.watch_prefix(self.prefix, start, on_events, on_error)

    def _apply(self, event: WatchEvent) -> None:
        # idempotent by content (a put of the value held, a delete of a key not held: nothing), so
        # several events of one revision (a prefix delete, a lease expiry) all count
        with self._lock:
            if event.kind == "delete":
                old = self._cache.pop(event.key, None)
                if old is None:
                    return
                event = WatchEvent("delete", event.key, old, event.mod_revision)
            else:
                held = self._held(event.value)
                if self._cache.get(event.key) == held:
                    return
                self._cache[event.key] = held
        self._call(event)

    def _call(self, event: WatchEvent) -> None:
        try:
            self._handler(event)
        except Exception:
            log.exception("reflector %s: handler failed on %s of %s", self.name, event.kind, event.key)


def _same(value: bytes) -> bytes:
    return value


def _nothing(_value: bytes) -> bytes:
    return b""


def _fingerprint(value: bytes) -> bytes:
    return hashlib.blake2b(value, digest_size=16).digest()
