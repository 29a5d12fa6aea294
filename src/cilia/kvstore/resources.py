"""EtcdStore: the object store (`cilia.resources.store.ResourceStore`) over the kvstore, so
`cilia apply` on any node writes an object once and every agent's watchers see it.

Objects live at `cilia/resources/<Kind>/<namespace or _>/<name>` as JSON, without
`metadata.resourceVersion`: that is the key's etcd mod_revision, set on read (as Kubernetes does).
An apply validates the whole batch first (the kinds it was given, the namespaces, as LocalStore
does), reads the objects it names, and writes the changed ones in transactions conditioned on what
it read (a concurrent apply elsewhere makes it read again). It returns once this node's watchers
have seen its own change, so `apply` then `--wait` behaves as on one node.

Every change, from any node, reaches the watchers through a reflector on `cilia/resources/`. What
the reflector holds is also kept in a SQLite cache file (a row per object, raw bytes as etcd holds
them), so an agent that restarts while etcd is down still has its objects, and the first list when
etcd answers yields only what changed meanwhile. An apply or delete while etcd is unreachable is
refused with a 503 ApiError naming the store's error (nothing is written locally in its place).

A key or value under the prefix this code cannot read (written by hand, another version) is
logged with its key and skipped."""

from __future__ import annotations

import copy
import json
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cilia.api.errors import CNI_TRY_AGAIN_LATER, ApiError
from cilia.kvstore import clusterips
from cilia.kvstore.api import Cmp, Delete, KvClient, KvError, Put, WatchEvent
from cilia.kvstore.clusterips import ClusterIpRound, ServiceCidr
from cilia.kvstore.reflector import PrefixReflector
from cilia.resources.kinds import KindRegistry
from cilia.resources.parse import ResourceError
from cilia.resources.store import ApplyOutcome, Object, Watcher, _comparable, _ref, copies_of, delete_target
from cilia.resources.validate import describe

log = logging.getLogger(__name__)

PREFIX = "cilia/resources/"
CLUSTER_SCOPE = "_"  # the namespace segment of a cluster-scoped object's key
_TXN_OBJECTS = 100  # etcd refuses transactions of more than 128 operations (--max-txn-ops)
_TXN_SERVICES = 25  # a Service adds up to four compares (its ClusterIPs kept, taken, released)
_ATTEMPTS = 10  # each lost race means another apply committed: enough for several nodes at once


class BadObject(ValueError):
    """A key or value under cilia/resources/ that is no object of a known kind (names the key)."""


def object_key(kind: str, namespace: str | None, name: str) -> str:
    return f"{PREFIX}{kind}/{namespace or CLUSTER_SCOPE}/{name}"


def encode_object(obj: Object) -> bytes:
    body = copy.deepcopy(obj)
    body.get("metadata", {}).pop("resourceVersion", None)
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def decode_object(key: str, value: bytes, kinds: KindRegistry, revision: int = 0) -> Object:
    """An object read from the store, validated as an apply would; BadObject naming the key."""
    parts = key.removeprefix(PREFIX).split("/") if key.startswith(PREFIX) else []
    if len(parts) != 3 or not all(parts):
        raise BadObject(f"{key}: not {PREFIX}<Kind>/<namespace or _>/<name>")
    try:
        obj = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadObject(f"{key}: value is not JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise BadObject(f"{key}: value is not a JSON object")
    try:
        kinds.validate(obj)
        kind, namespace, name = _ref(obj)
    except (ResourceError, KeyError, TypeError, AttributeError) as exc:
        raise BadObject(f"{key}: {exc}") from exc
    if object_key(kind, namespace, name) != key:
        raise BadObject(f"{key}: holds {describe(obj)}, which belongs at {object_key(kind, namespace, name)}")
    if revision:
        obj["metadata"]["resourceVersion"] = str(revision)
    return obj


def _back_off(attempt: int) -> None:
    """A short random pause after a lost race, so appliers on several nodes spread out."""
    time.sleep(random.uniform(0, 0.01 * (attempt + 1)))


def unavailable(exc: KvError) -> ApiError:
    return ApiError(503, CNI_TRY_AGAIN_LATER, f"the kvstore is unreachable: {exc}",
                    "objects are kept in etcd; nothing was changed, try again when it answers")


class EtcdStore:
    def __init__(self, kv: KvClient, node: str, cache_file: Path, kinds: KindRegistry,
                 start: bool = True, wait_timeout: float = 5.0, service_cidrs: Sequence[ServiceCidr] = ()) -> None:
        self.kv = kv
        self.node = node
        # with ranges, Services get their ClusterIPs here, cluster-wide (cilia.kvstore.clusterips)
        self._service_cidrs = tuple(service_cidrs)
        self._kinds = kinds
        self._wait_timeout = wait_timeout
        self._lock = threading.RLock()
        self._watchers: list[Watcher] = []
        self._objects: dict[str, Object] = {}  # etcd key -> object (resourceVersion set)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(cache_file, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS objects "
                         "(key TEXT PRIMARY KEY, value BLOB NOT NULL, revision INTEGER NOT NULL)")
        seed: dict[str, bytes] = {}
        for key, value, revision in self._db.execute("SELECT key, value, revision FROM objects"):
            seed[key] = bytes(value)
            try:
                self._objects[key] = decode_object(key, bytes(value), kinds, int(revision))
            except BadObject as exc:
                log.warning("resource cache %s: %s; skipped", cache_file, exc)
        self._reflector = PrefixReflector(kv, PREFIX, self._on_event, initial=seed, name="resources")
        if start:
            self.start()

    def start(self) -> None:
        self._reflector.start()

    def close(self) -> None:
        self._reflector.stop()
        self._db.close()

    def wait_synced(self, timeout: float) -> bool:
        return self._reflector.wait_synced(timeout)

    @property
    def synced(self) -> bool:
        return self._reflector.synced

    # ----- ResourceStore -------------------------------------------------------------------------
    def watch(self, watcher: Watcher) -> None:
        self._watchers.append(watcher)

    def get(self, kind: str, namespace: str | None, name: str) -> Object | None:
        with self._lock:
            obj = self._objects.get(object_key(kind, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def apply(self, objects: list[Object]) -> list[ApplyOutcome]:
        batch = [copy.deepcopy(obj) for obj in objects]
        for obj in batch:
            self._kinds.validate(obj)
        batch_namespaces = {o["metadata"]["name"] for o in batch if o["kind"] == "Namespace"}
        for obj in batch:
            if self._kinds.is_namespaced(obj):
                namespace = obj["metadata"]["namespace"]
                if namespace not in batch_namespaces and namespace != "default" and \
                        self._read(object_key("Namespace", None, namespace)) is None:
                    raise ResourceError(
                        f"{describe(obj)}: field 'metadata.namespace': namespace {namespace!r} does not exist")
        outcomes: dict[int, ApplyOutcome] = {}
        last_revision = 0
        size = _TXN_SERVICES if self._service_cidrs and any(o["kind"] == "Service" for o in batch) else _TXN_OBJECTS
        for start in range(0, len(batch), size):
            chunk = list(enumerate(batch))[start:start + size]
            revision, chunk_outcomes = self._write_chunk(chunk)
            outcomes.update(chunk_outcomes)
            last_revision = max(last_revision, revision)
        self._wait_reflected(last_revision)
        return [outcomes[i] for i in range(len(batch))]

    def delete(self, objects: list[Object]) -> list[ApplyOutcome]:
        targets = [delete_target(obj, self._kinds) for obj in objects]
        outcomes: list[ApplyOutcome] = []
        last_revision = 0
        for kind, namespace, name in targets:
            revision = self._delete_one(object_key(kind, namespace, name))
            outcomes.append(ApplyOutcome(kind, namespace, name, "deleted" if revision else "not-found"))
            last_revision = max(last_revision, revision)
        self._wait_reflected(last_revision)
        return outcomes

    def _delete_one(self, key: str) -> int:
        """The revision of the delete, 0 if there was nothing to delete. A Service's ClusterIPs
        are released in the same transaction."""
        for attempt in range(_ATTEMPTS):
            current = self._read(key)
            if current is None:
                return 0
            compares: list[Cmp] = [Cmp(key, current.mod_revision)]
            ops: list[Put | Delete] = [Delete(key)]
            old = self._decoded(key, current.value) if self._manages_ips(key) else None
            if old is not None:
                ip_round = self._ip_round()
                ip_round.release_all(old)
                compares += ip_round.compares
                ops += ip_round.ops
            try:
                revision = self.kv.txn(compares, ops)
            except KvError as exc:
                raise unavailable(exc) from exc
            if revision:
                return revision
            _back_off(attempt)
        raise ApiError(409, CNI_TRY_AGAIN_LATER, f"{key} changed concurrently {_ATTEMPTS} times while deleting")

    # ----- writing -------------------------------------------------------------------------------
    def _read(self, key: str) -> Any:
        try:
            return self.kv.get(key)
        except KvError as exc:
            raise unavailable(exc) from exc

    def _manages_ips(self, key: str) -> bool:
        return bool(self._service_cidrs) and key.startswith(f"{PREFIX}Service/")

    def _decoded(self, key: str, value: bytes) -> Object | None:
        try:
            return decode_object(key, value, self._kinds)
        except BadObject as exc:
            log.warning("resources: %s; overwritten", exc)
            return None

    def _ip_round(self) -> ClusterIpRound:
        """The ClusterIP reservations as etcd holds them now, for one transaction."""
        try:
            reservations = clusterips.read_reservations(self.kv)
        except KvError as exc:
            raise unavailable(exc) from exc
        with self._lock:  # addresses of Services stored without a reservation (older agents)
            unreserved = {ip for key, obj in self._objects.items() if key.startswith(f"{PREFIX}Service/")
                          for ip in clusterips.requested_ips(obj) or []}
        return ClusterIpRound(self._service_cidrs, reservations, unreserved - reservations.keys(), self._holds)

    def _holds(self, service: str, ip: clusterips.IPAddress) -> bool:
        """Whether that Service, as etcd holds it now, names that address."""
        namespace, _, name = service.partition("/")
        key = object_key("Service", namespace, name)
        current = self._read(key)
        obj = self._decoded(key, current.value) if current is not None else None
        return obj is not None and ip in (clusterips.requested_ips(obj) or [])

    def _write_chunk(self, chunk: list[tuple[int, Object]]) -> tuple[int, dict[int, ApplyOutcome]]:
        """Write the changed objects of `chunk` in one transaction conditioned on what was read
        (with their ClusterIPs' reservations: cilia.kvstore.clusterips)."""
        for attempt in range(_ATTEMPTS):
            outcomes: dict[int, ApplyOutcome] = {}
            compares: list[Cmp] = []
            ops: list[Put | Delete] = []
            ip_round: ClusterIpRound | None = None
            for index, given in chunk:
                kind, namespace, name = _ref(given)
                key = object_key(kind, namespace, name)
                current = self._read(key)
                old = self._decoded(key, current.value) if current is not None else None
                obj = given
                if self._manages_ips(key):
                    obj = copy.deepcopy(given)  # filled for this attempt only
                    ip_round = ip_round or self._ip_round()
                    ip_round.admit(obj, old)
                if old is not None and _comparable(old) == _comparable(obj):
                    outcomes[index] = ApplyOutcome(kind, namespace, name, "unchanged")
                    continue
                compares.append(Cmp(key, current.mod_revision if current is not None else 0))
                ops.append(Put(key, encode_object(obj)))
                outcomes[index] = ApplyOutcome(kind, namespace, name, "configured" if old else "created")
            if ip_round is not None and ops:
                compares += ip_round.compares
                ops += ip_round.ops
            if not ops:
                return 0, outcomes
            try:
                revision = self.kv.txn(compares, ops)
            except KvError as exc:
                raise unavailable(exc) from exc
            if revision:
                return revision, outcomes
            # another apply changed one of these objects (or took an address) between the read
            # and the write: again
            _back_off(attempt)
        raise ApiError(409, CNI_TRY_AGAIN_LATER, f"objects changed concurrently {_ATTEMPTS} times while applying",
                       ", ".join(describe(obj) for _, obj in chunk[:5]))

    def _wait_reflected(self, revision: int) -> None:
        if revision and not self._reflector.wait_revision(revision, self._wait_timeout):
            log.warning("resources: revision %d written but not yet seen by the watch (%s)", revision,
                        self._reflector.last_error or "watch behind")

    # ----- the reflected view --------------------------------------------------------------------
    def _on_event(self, event: WatchEvent) -> None:
        if event.kind == "delete":
            with self._lock:
                old = self._objects.pop(event.key, None)
            self._uncache(event.key)
            if old is not None:
                self._fire("DELETED", old, old)
            return
        try:
            obj = decode_object(event.key, event.value, self._kinds, event.mod_revision)
        except BadObject as exc:
            log.warning("resources: %s; skipped", exc)
            with self._lock:
                old = self._objects.pop(event.key, None)  # a good object overwritten by garbage is gone
            self._uncache(event.key)
            if old is not None:
                self._fire("DELETED", old, old)
            return
        with self._lock:
            old = self._objects.get(event.key)
            self._objects[event.key] = obj
        self._cache(event.key, event.value, event.mod_revision)
        self._fire("MODIFIED" if old is not None else "ADDED", obj, old)

    def _fire(self, event_type: str, obj: Object, old: Object | None) -> None:
        for watcher in list(self._watchers):
            try:
                watcher(event_type, copy.deepcopy(obj), copy.deepcopy(old) if old is not None else None)
            except Exception:
                log.exception("resources: watcher failed on %s %s", event_type, describe(obj))

    def _cache(self, key: str, value: bytes, revision: int) -> None:
        try:
            with self._lock:
                self._db.execute("INSERT OR REPLACE INTO objects (key, value, revision) VALUES (?, ?, ?)",
                                 (key, value, revision))
        except sqlite3.Error as exc:
            log.warning("resource cache: writing %s: %s", key, exc)

    def _uncache(self, key: str) -> None:
        try:
            with self._lock:
                self._db.execute("DELETE FROM objects WHERE key = ?", (key,))
        except sqlite3.Error as exc:
            log.warning("resource cache: removing %s: %s", key, exc)

    # last in the class: below this, `list` in an annotation would name the method (mypy)
    def list(self, kind: str, namespace: str | None = None) -> list[Object]:
        with self._lock:
            return copies_of(self._objects.values(), kind, namespace)
