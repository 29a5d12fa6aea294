"""The per-endpoint regeneration queue: coalesced, worked by a bounded set of threads, with revisions.

Every accepted change that can alter some endpoint's policy gets the next *revision* and comes
with the inputs as of that revision (an immutable snapshot) and the endpoints it can affect.
Those endpoints are queued; an endpoint queued again before a worker took it is worked once,
with the newest snapshot. An endpoint is never worked by two threads at once.

Revisions are tracked cheaply: an endpoint that is neither queued nor being worked reflects the
current revision by construction (every change either queues it or does not affect it), so only
queued and in-flight endpoints carry a `realized` revision. `wait(N)` returns once none of them
is below N. `when_reached(N, f)` runs `f` then (the engine adds new CIDR identities to the
ipcache only once every policy that mentions them is installed).

With `workers=0` the queue is synchronous: `publish` works everything in the caller's thread
before it returns (the agent's `--policy-regeneration sync`, kept to measure the difference).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
Snapshot = TypeVar("Snapshot")
Work = Callable[[int, Snapshot], str]  # endpoint id, inputs -> "" when installed, else why not


@dataclass
class _Pending:
    realized: int  # the revision the endpoint's installed policy reflects at least
    wanted: int  # the revision of the newest change that queued it


@dataclass(frozen=True)
class WaitResult:
    revision: int  # asked for
    current: int  # the newest revision when the wait returned
    reached: bool  # every endpoint reflects `revision` (or failed trying, see not_ready)
    pending: list[int] = field(default_factory=list)  # endpoints still below it
    not_ready: dict[int, str] = field(default_factory=dict)  # endpoint -> why its policy is not installed


class RegenerationQueue(Generic[Snapshot]):
    def __init__(
        self,
        work: Callable[[int, Snapshot], str],
        snapshot: Snapshot,
        *,
        workers: int = 2,
        on_queued: Callable[[list[int]], None] = lambda _ids: None,
        on_done: Callable[[int, str], None] = lambda _id, _error: None,
    ) -> None:
        self._work = work
        self._workers = workers
        self._on_queued = on_queued
        self._on_done = on_done
        self._cond = threading.Condition()
        self._snapshot = snapshot
        self._revision = 0
        self._pending: dict[int, _Pending] = {}  # queued or in flight; insertion order = work order
        self._in_flight: set[int] = set()
        self._errors: dict[int, str] = {}
        self._callbacks: list[tuple[int, Callable[[], None]]] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self.worked = 0  # regenerations done (for tests and the benchmark)
        # (endpoint id, seconds, error) after every regeneration: the agent's metrics count them
        self._observers: list[Callable[[int, float, str], None]] = []

    @property
    def synchronous(self) -> bool:
        return self._workers == 0

    @property
    def revision(self) -> int:
        with self._cond:
            return self._revision

    def snapshot(self) -> tuple[Snapshot, int]:
        with self._cond:
            return self._snapshot, self._revision

    # ----- threads -------------------------------------------------------------------------------
    def start(self) -> None:
        for n in range(self._workers):
            thread = threading.Thread(target=self._worker, name=f"regeneration-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    # ----- changes -------------------------------------------------------------------------------
    def publish(self, snapshot: Snapshot, affected: Iterable[int]) -> int:
        """A change: the next revision, with its inputs and the endpoints it can affect."""
        with self._cond:
            self._revision += 1
            self._snapshot = snapshot
            queued = []
            for endpoint_id in affected:
                entry = self._pending.get(endpoint_id)
                if entry is None:
                    self._pending[endpoint_id] = _Pending(self._revision - 1, self._revision)
                    queued.append(endpoint_id)
                else:
                    entry.wanted = self._revision
            if queued:
                self._on_queued(queued)
            revision = self._revision
            self._cond.notify_all()
            callbacks = self._due_callbacks()
        self._run(callbacks)
        if self.synchronous:
            self.drain()
        return revision

    def when_reached(self, revision: int, callback: Callable[[], None]) -> None:
        with self._cond:
            self._callbacks.append((revision, callback))
            callbacks = self._due_callbacks()
        self._run(callbacks)

    def forget(self, endpoint_id: int, timeout: float = 30.0) -> None:
        """The endpoint is going away: drop it from the queue, waiting out a worker busy with it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while endpoint_id in self._in_flight and time.monotonic() < deadline:
                self._cond.wait(min(0.5, max(0.0, deadline - time.monotonic())))
            self._pending.pop(endpoint_id, None)
            self._errors.pop(endpoint_id, None)
            self._cond.notify_all()
            callbacks = self._due_callbacks()
        self._run(callbacks)

    # ----- work ----------------------------------------------------------------------------------
    def run_now(self, endpoint_id: int, timeout: float = 60.0) -> str:
        """Regenerate one endpoint in the caller's thread with the newest inputs (an ADD waits for
        its own policy). Waits out a worker busy with the same endpoint first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while endpoint_id in self._in_flight:
                if time.monotonic() >= deadline:
                    return f"regeneration of endpoint {endpoint_id} did not finish within {timeout:.0f} s"
                self._cond.wait(min(0.5, max(0.0, deadline - time.monotonic())))
            self._pending.setdefault(endpoint_id, _Pending(self._revision, self._revision))
            self._in_flight.add(endpoint_id)
            snapshot, revision = self._snapshot, self._revision
        return self._do(endpoint_id, snapshot, revision)

    def drain(self) -> None:
        """Work everything queued in this thread (synchronous mode)."""
        while True:
            taken = self._take(block=False)
            if taken is None:
                return
            self._do(*taken)

    def _take(self, *, block: bool) -> tuple[int, Snapshot, int] | None:
        with self._cond:
            while True:
                if self._stopping:
                    return None
                for endpoint_id in self._pending:
                    if endpoint_id not in self._in_flight:
                        self._in_flight.add(endpoint_id)
                        return endpoint_id, self._snapshot, self._revision
                if not block:
                    return None
                self._cond.wait()

    def _worker(self) -> None:
        while True:
            taken = self._take(block=True)
            if taken is None:
                return
            self._do(*taken)

    def add_observer(self, observer: Callable[[int, float, str], None]) -> None:
        """`observer(endpoint_id, seconds, error)` after every regeneration, in the worker's thread."""
        self._observers.append(observer)

    def _do(self, endpoint_id: int, snapshot: Snapshot, revision: int) -> str:
        started = time.monotonic()
        try:
            error = self._work(endpoint_id, snapshot)
        except Exception as exc:  # a bug must not kill the worker; the endpoint is reported not-ready
            log.exception("endpoint %d: regeneration failed", endpoint_id)
            error = f"regeneration failed: {type(exc).__name__}: {exc}"
        elapsed = time.monotonic() - started
        for observer in self._observers:
            try:
                observer(endpoint_id, elapsed, error)
            except Exception:  # an observer (metrics) must not break regeneration
                log.exception("a regeneration observer failed")
        with self._cond:
            self._in_flight.discard(endpoint_id)
            self.worked += 1
            entry = self._pending.get(endpoint_id)
            if entry is not None:
                if entry.wanted <= revision:
                    # Changes after `revision` did not queue it, so they do not affect it: what it
                    # has installed is what the current revision asks for.
                    del self._pending[endpoint_id]
                    if error:
                        self._errors[endpoint_id] = error
                    else:
                        self._errors.pop(endpoint_id, None)
                    self._on_done(endpoint_id, error)
                else:
                    entry.realized = max(entry.realized, revision)
            self._cond.notify_all()
            callbacks = self._due_callbacks()
        self._run(callbacks)
        return error

    # ----- revisions -----------------------------------------------------------------------------
    def _below(self, revision: int, among: set[int] | None = None) -> bool:
        """Is some queued endpoint (of `among`) still below `revision`? Stops at the first: the
        oldest entries come first, so while a big change is worked this is one look, not a scan."""
        return any(p.realized < revision for i, p in self._pending.items() if among is None or i in among)

    def _due_callbacks(self) -> list[Callable[[], None]]:
        if not self._callbacks:
            return []
        due = [cb for rev, cb in self._callbacks if not self._below(rev)]
        if due:
            self._callbacks = [(rev, cb) for rev, cb in self._callbacks if self._below(rev)]
        return due

    @staticmethod
    def _run(callbacks: list[Callable[[], None]]) -> None:
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("a revision callback failed")

    def wait(self, revision: int | None = None, timeout: float = 30.0, *,
             only: Iterable[int] | None = None) -> WaitResult:
        """Until every endpoint (or every one of `only`) reflects `revision` (default: the current
        one), or `timeout`."""
        deadline = time.monotonic() + max(0.0, timeout)
        among = None if only is None else set(only)
        with self._cond:
            target = self._revision if revision is None else revision
            while True:
                reached = self._revision >= target and not self._below(target, among)
                remaining = deadline - time.monotonic()
                if reached or remaining <= 0:
                    pending = sorted(i for i, p in self._pending.items()
                                     if p.realized < target and (among is None or i in among))
                    return WaitResult(target, self._revision, reached, pending, dict(self._errors))
                self._cond.wait(min(remaining, 0.5))

    def error(self, endpoint_id: int) -> str:
        with self._cond:
            return self._errors.get(endpoint_id, "")

    def queued(self) -> list[int]:
        with self._cond:
            return list(self._pending)
