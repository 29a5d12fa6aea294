"""The object store: a Protocol, and the embedded LocalStore (JSON file, watch callbacks)."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cilia.jsonfile import read_json, write_json
from cilia.resources.parse import ResourceError
from cilia.resources.validate import describe, is_cluster_scoped, is_namespaced, validate

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
    """What `apply` compares: everything but status and the store's resourceVersion."""
    body = {k: v for k, v in obj.items() if k != "status"}
    body["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return body


def _key(kind: str, namespace: str | None, name: str) -> str:
    return f"{kind}/{namespace or ''}/{name}"


class ResourceStore(Protocol):
    def apply(self, objects: list[Object]) -> list[ApplyOutcome]: ...

    def delete(self, objects: list[Object]) -> list[ApplyOutcome]: ...

    def get(self, kind: str, namespace: str | None, name: str) -> Object | None: ...

    def list(self, kind: str, namespace: str | None = None) -> list[Object]: ...

    def watch(self, watcher: Watcher) -> None: ...


class LocalStore:
    """Validates a whole batch before storing any of it: a bad object changes nothing."""

    def __init__(self, state_file: Path) -> None:
        self._state_file = state_file
        self._lock = threading.RLock()
        state = read_json(state_file, {"version": 0, "objects": {}})
        self._version: int = state["version"]
        self._objects: dict[str, Object] = state["objects"]
        self._watchers: list[Watcher] = []

    def watch(self, watcher: Watcher) -> None:
        self._watchers.append(watcher)

    def apply(self, objects: list[Object]) -> list[ApplyOutcome]:
        batch = [copy.deepcopy(obj) for obj in objects]
        for obj in batch:
            validate(obj)
        with self._lock:
            batch_namespaces = {o["metadata"]["name"] for o in batch if o["kind"] == "Namespace"}
            for obj in batch:
                if is_namespaced(obj):
                    namespace = obj["metadata"]["namespace"]
                    if namespace not in batch_namespaces and self.get("Namespace", None, namespace) is None \
                            and namespace != "default":
                        raise ResourceError(
                            f"{describe(obj)}: field 'metadata.namespace': namespace {namespace!r} does not exist"
                        )
            outcomes: list[ApplyOutcome] = []
            events: list[tuple[str, Object, Object | None]] = []
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
                outcomes.append(ApplyOutcome(kind, namespace, name, "configured" if old else "created"))
                events.append(("MODIFIED" if old else "ADDED", obj, old))
            self._save()
        for event in events:
            for watcher in self._watchers:
                watcher(*event)
        return outcomes

    def delete(self, objects: list[Object]) -> list[ApplyOutcome]:
        outcomes: list[ApplyOutcome] = []
        events: list[tuple[str, Object, Object | None]] = []
        with self._lock:
            for obj in objects:
                metadata = obj.get("metadata") or {}
                kind, name = obj.get("kind"), metadata.get("name")
                if not isinstance(kind, str) or not isinstance(name, str):
                    raise ResourceError(f"{describe(obj)}: 'kind' and 'metadata.name' are required to delete")
                namespace = metadata.get("namespace") or (None if is_cluster_scoped(obj) else "default")
                old = self._objects.pop(_key(kind, namespace, name), None)
                outcomes.append(ApplyOutcome(kind, namespace, name, "deleted" if old else "not-found"))
                if old is not None:
                    events.append(("DELETED", old, old))
            self._save()
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
            return [
                copy.deepcopy(obj)
                for obj in self._objects.values()
                if obj["kind"] == kind and (namespace is None or obj["metadata"].get("namespace") == namespace)
            ]

    def _save(self) -> None:
        write_json(self._state_file, {"version": self._version, "objects": self._objects})
