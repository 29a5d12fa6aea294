"""Label set -> numeric security identity: reference counted, persisted, reserved ones built in."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cilia.identity.labels import Label, LabelSet
from cilia.identity.reserved import MAX_CLUSTER_IDENTITY, MIN_CLUSTER_IDENTITY, ReservedIdentity
from cilia.jsonfile import read_json, write_json


class IdentityExhausted(Exception):
    pass


@dataclass(frozen=True)
class Identity:
    id: int
    labels: LabelSet
    reserved: bool = False
    references: int = 0


class IdentityAllocator(Protocol):
    """Narrow on purpose: an etcd-backed allocator (compare-and-swap) will implement the same."""

    def allocate(self, labels: LabelSet) -> Identity: ...

    def release(self, labels: LabelSet) -> bool: ...

    def lookup_by_id(self, identity_id: int) -> Identity | None: ...

    def all(self) -> list[Identity]: ...


def _reserved() -> dict[int, LabelSet]:
    return {
        int(r): LabelSet([Label("reserved", r.name.lower().replace("_", "-"))]) for r in ReservedIdentity
    }


class LocalIdentityAllocator:
    """The embedded allocator: one node, state in a JSON file so restarts keep the numbers."""

    def __init__(self, state_file: Path) -> None:
        self._state_file = state_file
        self._lock = threading.Lock()
        self._reserved = _reserved()
        state = read_json(state_file, {"identities": {}})
        # Persisted: labels key -> id. References are rebuilt by the endpoints that restore.
        self._ids: dict[str, int] = {k: int(v) for k, v in state["identities"].items()}
        self._labels: dict[int, LabelSet] = {i: LabelSet.parse_many(k.split(";")) for k, i in self._ids.items()}
        self._refs: dict[int, int] = {}
        self._listeners: list[Callable[[Identity, bool], None]] = []

    def subscribe(self, listener: Callable[[Identity, bool], None]) -> None:
        """listener(identity, added) after an identity appears (added) or disappears."""
        self._listeners.append(listener)

    def allocate(self, labels: LabelSet) -> Identity:
        with self._lock:
            key = labels.key()
            identity_id = self._ids.get(key)
            created = identity_id is None
            if identity_id is None:
                identity_id = self._next_free()
                self._ids[key] = identity_id
                self._labels[identity_id] = labels
                self._save()
            self._refs[identity_id] = self._refs.get(identity_id, 0) + 1
            identity = Identity(identity_id, labels, False, self._refs[identity_id])
        if created:
            for listener in self._listeners:
                listener(identity, True)
        return identity

    def release(self, labels: LabelSet) -> bool:
        with self._lock:
            identity_id = self._ids.get(labels.key())
            if identity_id is None:
                return False
            refs = self._refs.get(identity_id, 0) - 1
            if refs > 0:
                self._refs[identity_id] = refs
                return True
            self._refs.pop(identity_id, None)
            del self._ids[labels.key()]
            del self._labels[identity_id]
            self._save()
            identity = Identity(identity_id, labels)
        for listener in self._listeners:
            listener(identity, False)
        return True

    def lookup_by_id(self, identity_id: int) -> Identity | None:
        if identity_id in self._reserved:
            return Identity(identity_id, self._reserved[identity_id], True)
        labels = self._labels.get(identity_id)
        return Identity(identity_id, labels, False, self._refs.get(identity_id, 0)) if labels else None

    def all(self) -> list[Identity]:
        reserved = [Identity(i, labels, True) for i, labels in self._reserved.items()]
        with self._lock:
            allocated = [Identity(i, labels, False, self._refs.get(i, 0)) for i, labels in self._labels.items()]
        return sorted(reserved + allocated, key=lambda identity: identity.id)

    def forget_unreferenced(self) -> int:
        """After restore: drop persisted identities no endpoint took again."""
        with self._lock:
            stale = [key for key, i in self._ids.items() if self._refs.get(i, 0) == 0]
            for key in stale:
                del self._labels[self._ids.pop(key)]
            if stale:
                self._save()
            return len(stale)

    def _next_free(self) -> int:
        used = set(self._labels)
        for candidate in range(MIN_CLUSTER_IDENTITY, MAX_CLUSTER_IDENTITY + 1):
            if candidate not in used:
                return candidate
        raise IdentityExhausted(
            f"all {MAX_CLUSTER_IDENTITY - MIN_CLUSTER_IDENTITY + 1} cluster identities are in use"
        )

    def _save(self) -> None:
        write_json(self._state_file, {"identities": self._ids})
