"""NodeSession: the one lease a node's agent holds in the kvstore, kept alive by a thread.

Everything a node publishes about itself (its node record, its ipcache entries, its identity
references) is written under this lease, so when the node dies the store deletes it all once the
TTL passes. If the lease is lost anyway (etcd unreachable for longer than the TTL, or the store
forgot it), the session grants a new one and calls every `on_new_lease` callback with it, so the
owners write their keys again under the new lease. The agent never blocks on the store: while no
lease is held, `lease` raises KvError and the owners keep their local state."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cilia.kvstore.api import KvClient, KvError

log = logging.getLogger(__name__)

LeaseCallback = Callable[[int], None]


class NodeSession:
    def __init__(self, kv: KvClient, node: str, ttl_seconds: int = 15) -> None:
        if ttl_seconds < 2:
            raise ValueError(f"lease TTL {ttl_seconds} s is too short (at least 2 s)")
        self.kv = kv
        self.node = node
        self.ttl_seconds = ttl_seconds
        self._lock = threading.Lock()
        self._lease = 0
        self._callbacks: list[LeaseCallback] = []
        self._stop = threading.Event()
        self._changed = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self.last_error = ""

    @property
    def lease(self) -> int:
        """The lease held now; KvError while none is (the store has not been reachable yet)."""
        with self._lock:
            if not self._lease:
                raise KvError(f"node {self.node}: no kvstore lease yet ({self.last_error or 'not granted'})")
            return self._lease

    @property
    def has_lease(self) -> bool:
        with self._lock:
            return self._lease != 0

    def on_new_lease(self, callback: LeaseCallback) -> None:
        """callback(lease) after each grant from now on: the first one (if it comes after this
        call) and each one that replaces a lost lease. Called on the session's thread; a failing
        callback is logged and the others still run."""
        with self._lock:
            self._callbacks.append(callback)

    def wait_lease(self, timeout: float) -> int:
        """The lease, waiting up to `timeout` s for the first grant (KvError after)."""
        with self._changed:
            self._changed.wait_for(lambda: self._lease != 0 or self._stop.is_set(), timeout)
        return self.lease

    def step(self) -> None:
        """One round: grant a lease if none is held, else refresh it (a new one if it is gone).
        Store errors are remembered in `last_error`, never raised: the next round tries again."""
        with self._lock:
            lease = self._lease
        try:
            if lease and self.kv.keepalive(lease):
                self.last_error = ""
                return
            if lease:
                log.warning("node %s: kvstore lease %x expired; granting a new one", self.node, lease)
            new = self.kv.grant_lease(self.ttl_seconds)
        except KvError as exc:
            if self.last_error != str(exc):
                log.warning("node %s: kvstore lease: %s", self.node, exc)
            self.last_error = str(exc)
            return
        self.last_error = ""
        with self._changed:
            self._lease = new
            callbacks = list(self._callbacks)
            self._changed.notify_all()
        log.info("node %s: kvstore lease %x granted (TTL %d s)", self.node, new, self.ttl_seconds)
        for callback in callbacks:
            try:
                callback(new)
            except Exception:
                log.exception("node %s: on_new_lease callback %r failed", self.node, callback)

    def start(self) -> None:
        """Run `step` in a thread: at once, then every TTL/3 (every second while no lease is held)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"cilia-kv-session-{self.node}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step()
            interval = self.ttl_seconds / 3 if self.has_lease and not self.last_error else 1.0
            self._stop.wait(interval)

    def close(self, revoke: bool = False, timeout: float = 5.0) -> None:
        """Stop refreshing. `revoke` deletes everything under the lease now (a node leaving for
        good); without it the keys stay until the TTL passes, so a restarting agent does not make
        every other node drop and re-add its entries."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            lease, self._lease = self._lease, 0
        if revoke and lease:
            try:
                self.kv.revoke(lease)
            except KvError as exc:
                log.warning("node %s: revoking lease %x: %s", self.node, lease, exc)
