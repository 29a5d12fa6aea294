"""The object store: a Protocol, and the embedded LocalStore (SQLite file, watch callbacks)."""

from __future__ import annotations

import copy
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cilia.jsonfile import read_json
from cilia.resources.kinds import KindRegistry
from cilia.resources.parse import ResourceError
from cilia.resources.validate import describe

Object = dict[str, Any]
Watcher = Callable[[str, Object, Object | None], None]


@dataclass(frozen=True)
class ApplyOutcome:
    kind: str
    namespace: str | None
    name: str
    action: str


def _ref(obj: Object) -> tuple[str, str | None, str]:
    metadata = obj["metadata"]
    return obj["kind"], metadata.get("namespace"), metadata["name"]


def _comparable(obj: Object) -> Object:
    """What `apply` compares: everything but the store's resourceVersion (status too: a Service's
    status.loadBalancer.ingress is its LoadBalancer address)."""
    body = dict(obj)
    body["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return body


def delete_target(obj: Object, kinds: KindRegistry) -> tuple[str, str | None, str]:
    """(kind, namespace, name) a delete names; a namespaced kind without a namespace is in `default`."""
    metadata = obj.get("metadata") or {}
    kind, name = obj.get("kind"), metadata.get("name")
    if not isinstance(kind, str) or not isinstance(name, str):
        raise ResourceError(f"{describe(obj)}: 'kind' and 'metadata.name' are required to delete")
    namespace = metadata.get("namespace") or (None if kinds.is_cluster_scoped(obj) else "default")
    return kind, namespace, name


def copies_of(objects: Iterable[Object], kind: str, namespace: str | None) -> list[Object]:
    """Deep copies of the objects of `kind` (in `namespace`, or all): what a store's `list` returns."""
    return [copy.deepcopy(obj) for obj in objects
            if obj["kind"] == kind and (namespace is None or obj["metadata"].get("namespace") == namespace)]


def _key(kind: str, namespace: str | None, name: str) -> str:
    return f"{kind}/{namespace or ''}/{name}"


class ResourceStore(Protocol):
    def apply(self, objects: list[Object]) -> list[ApplyOutcome]: ...

    def delete(self, objects: list[Object]) -> list[ApplyOutcome]: ...

    def get(self, kind: str, namespace: str | None, name: str) -> Object | None: ...

    def list(self, kind: str, namespace: str | None = None) -> list[Object]: ...

    def watch(self, watcher: Watcher) -> None: ...


class LocalStore:
    """Validates a whole batch before storing any of it (against the kinds it was given): a bad
    object changes nothing.

    Objects live in memory and in a SQLite file, one row each, so an apply writes only the rows it
    changes (in one transaction) whatever the number of objects stored: at 10,000 Services a change
    costs a row, not a rewrite of everything. WAL journal: a killed agent loses nothing committed."""

    def __init__(self, state_file: Path, kinds: KindRegistry) -> None:
        self._state_file = state_file
        self._kinds = kinds
        self._lock = threading.RLock()
        state_file.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(state_file, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, body TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self._objects: dict[str, Object] = {
            key: json.loads(body) for key, body in self._db.execute("SELECT key, body FROM objects")}
        row = self._db.execute("SELECT value FROM meta WHERE name = 'version'").fetchone()
        self._version: int = int(row[0]) if row else 0
        self._import_legacy_json(state_file.with_suffix(".json"))
        self._watchers: list[Watcher] = []

    def _import_legacy_json(self, legacy: Path) -> None:
        """An agent of an earlier version kept everything in one JSON file: take it over once."""
        if legacy == self._state_file or self._objects or not legacy.is_file():
            return
        state = read_json(legacy, {"version": 0, "objects": {}})
        self._version = int(state["version"])
        self._objects = dict(state["objects"])
        self._save(set(self._objects))
        legacy.rename(legacy.with_suffix(".json.imported"))

    def watch(self, watcher: Watcher) -> None:
        self._watchers.append(watcher)

    def apply(self, objects: list[Object]) -> list[ApplyOutcome]:
        batch = [copy.deepcopy(obj) for obj in objects]
        for obj in batch:
            self._kinds.validate(obj)
        with self._lock:
            batch_namespaces = {o["metadata"]["name"] for o in batch if o["kind"] == "Namespace"}
            for obj in batch:
                if self._kinds.is_namespaced(obj):
                    namespace = obj["metadata"]["namespace"]
                    if namespace not in batch_namespaces and self.get("Namespace", None, namespace) is None \
                            and namespace != "default":
                        raise ResourceError(
                            f"{describe(obj)}: field 'metadata.namespace': namespace {namespace!r} does not exist"
                        )
            outcomes: list[ApplyOutcome] = []
            events: list[tuple[str, Object, Object | None]] = []
            changed: set[str] = set()
            for obj in batch:
                kind, namespace, name = _ref(obj)
                key = _key(kind, namespace, name)
                old = self._objects.get(key)
                if old is not None and _comparable(old) == _comparable(obj):
                    outcomes.append(ApplyOutcome(kind, namespace, name, "unchanged"))
                    continue
                self._version += 1
                obj["metadata"]["resourceVersion"] = str(self._version)
                self._objects[key] = obj
                changed.add(key)
                outcomes.append(ApplyOutcome(kind, namespace, name, "configured" if old else "created"))
                events.append(("MODIFIED" if old else "ADDED", obj, old))
            self._save(changed)
        for event in events:
            for watcher in self._watchers:
                watcher(*event)
        return outcomes

    def delete(self, objects: list[Object]) -> list[ApplyOutcome]:
        outcomes: list[ApplyOutcome] = []
        events: list[tuple[str, Object, Object | None]] = []
        changed: set[str] = set()
        with self._lock:
            for obj in objects:
                kind, namespace, name = delete_target(obj, self._kinds)
                key = _key(kind, namespace, name)
                old = self._objects.pop(key, None)
                outcomes.append(ApplyOutcome(kind, namespace, name, "deleted" if old else "not-found"))
                if old is not None:
                    changed.add(key)
                    events.append(("DELETED", old, old))
            self._save(changed)
        for event in events:
            for watcher in self._watchers:
                watcher(*event)
        return outcomes

    def get(self, kind: str, namespace: str | None, name: str) -> Object | None:
        with self._lock:
            obj = self._objects.get(_key(kind, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, kind: str, namespace: str | None = None) -> list[Object]:
        with self._lock:
            return copies_of(self._objects.values(), kind, namespace)

    def _save(self, keys: set[str]) -> None:
        """Write the rows of `keys` (deleted ones removed) and the version, in one transaction."""
        if not keys:
            return
        rows = [(key, json.dumps(self._objects[key])) for key in keys if key in self._objects]
        gone = [(key,) for key in keys if key not in self._objects]
        self._db.execute("BEGIN")
        try:
            self._db.executemany("INSERT OR REPLACE INTO objects (key, body) VALUES (?, ?)", rows)
            self._db.executemany("DELETE FROM objects WHERE key = ?", gone)
            self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('version', ?)", (self._version,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
