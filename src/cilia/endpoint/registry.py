"""The endpoints of this node and the state each is in: the one truth both engines read.

The endpoint manager adds, replaces and removes records and drives the lifecycle states
(creating ... ready, disconnecting, disconnected). The policy engine reads records through it
and reports regeneration: `regeneration_queued` (-> regenerating) and `regeneration_done`
(-> ready, or not-ready with the reason). While the manager holds an endpoint (an ADD or a
relabel in progress) the outcome of a regeneration is remembered but the state is left to the
manager, which applies it when it lets go: an endpoint is `ready` only once its programs are
attached too.

A leaf: it calls nothing that could call back into it, so any component may call it under its
own lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cilia.endpoint.record import EndpointRecord
from cilia.endpoint.state import EndpointState, EndpointStateMachine

log = logging.getLogger(__name__)
S = EndpointState
Transition = Callable[[int, EndpointState, str], None]


@dataclass
class _Entry:
    record: EndpointRecord
    machine: EndpointStateMachine
    held: bool = False
    policy_error: str = ""  # outcome of the latest regeneration ("" = installed)


class EndpointRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self._listeners: list[Transition] = []

    def on_transition(self, listener: Transition) -> None:
        """Called (under the registry's lock: keep it short) after every state change."""
        self._listeners.append(listener)

    def _move(self, entry: _Entry, to: EndpointState, reason: str) -> None:
        if entry.machine.state is to:
            entry.machine.reason = reason
            return
        entry.machine.transition(to, reason)
        for listener in self._listeners:
            listener(entry.record.id, to, reason)

    # ----- lifecycle (the endpoint manager) -------------------------------------------------------
    def add(self, record: EndpointRecord, machine: EndpointStateMachine, *, held: bool) -> None:
        with self._lock:
            self._entries[record.id] = _Entry(record, machine, held)

    def replace(self, record: EndpointRecord) -> None:
        with self._lock:
            entry = self._entries.get(record.id)
            if entry is not None:
                entry.record = record

    def hold(self, endpoint_id: int, reason: str) -> None:
        """A lifecycle step starts: regenerating until `release`."""
        with self._lock:
            entry = self._entries.get(endpoint_id)
            if entry is not None:
                entry.held = True
                self._move(entry, S.REGENERATING, reason)

    def release(self, endpoint_id: int, reason: str) -> EndpointState | None:
        """The lifecycle step is done: the state follows the latest regeneration's outcome."""
        with self._lock:
            entry = self._entries.get(endpoint_id)
            if entry is None:
                return None
            entry.held = False
            if entry.machine.state is S.REGENERATING:
                if entry.policy_error:
                    self._move(entry, S.NOT_READY, entry.policy_error)
                else:
                    self._move(entry, S.READY, reason)
            return entry.machine.state

    def transition(self, endpoint_id: int, to: EndpointState, reason: str) -> None:
        with self._lock:
            entry = self._entries.get(endpoint_id)
            if entry is not None:
                self._move(entry, to, reason)

    def remove(self, endpoint_id: int, reason: str = "removed") -> EndpointStateMachine | None:
        """The endpoint is gone: `disconnected`, and no longer listed."""
        with self._lock:
            entry = self._entries.pop(endpoint_id, None)
            if entry is None:
                return None
            if entry.machine.state is not S.DISCONNECTING:
                self._move(entry, S.DISCONNECTING, reason)
            self._move(entry, S.DISCONNECTED, reason)
            return entry.machine

    def discard(self, endpoint_id: int) -> None:
        """Forget an endpoint whose ADD was rolled back (it never existed for anyone)."""
        with self._lock:
            self._entries.pop(endpoint_id, None)

    # ----- regeneration (the policy engine) -------------------------------------------------------
    def regeneration_queued(self, endpoint_ids: Iterable[int]) -> None:
        with self._lock:
            for endpoint_id in endpoint_ids:
                entry = self._entries.get(endpoint_id)
                if entry is not None and entry.machine.state in (S.READY, S.NOT_READY):
                    self._move(entry, S.REGENERATING, "policy regeneration queued")

    def regeneration_done(self, endpoint_id: int, error: str) -> None:
        with self._lock:
            entry = self._entries.get(endpoint_id)
            if entry is None:
                return
            entry.policy_error = error
            if entry.held or entry.machine.state not in (S.REGENERATING, S.READY, S.NOT_READY):
                return
            if error:
                self._move(entry, S.NOT_READY, error)
            else:
                self._move(entry, S.READY, "policy installed")

    # ----- queries -------------------------------------------------------------------------------
    def records(self) -> list[EndpointRecord]:
        """Every endpoint that is not being disconnected."""
        with self._lock:
            return [e.record for e in self._entries.values() if e.machine.state not in (S.DISCONNECTING,
                                                                                      S.DISCONNECTED)]

    def get(self, endpoint_id: int) -> EndpointRecord | None:
        """The endpoint's record unless it is being disconnected (then nothing must be installed for it)."""
        with self._lock:
            entry = self._entries.get(endpoint_id)
            if entry is None or entry.machine.state in (S.DISCONNECTING, S.DISCONNECTED):
                return None
            return entry.record

    def state(self, endpoint_id: int) -> tuple[EndpointState, str] | None:
        with self._lock:
            entry = self._entries.get(endpoint_id)
            return (entry.machine.state, entry.machine.reason) if entry is not None else None

    def snapshot(self) -> list[tuple[EndpointRecord, EndpointState, str]]:
        with self._lock:
            return [(e.record, e.machine.state, e.machine.reason)
                    for e in sorted(self._entries.values(), key=lambda e: e.record.id)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
