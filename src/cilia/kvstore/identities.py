"""EtcdIdentityAllocator: security identities allocated cluster-wide in the kvstore.

Keys (docs/cluster.md):
  cilia/identities/id/<N>              -> {"labels": ["k8s:app=web", ...]}   no lease
  cilia/identities/labels/<labels key> -> {"id": N}                          no lease
  cilia/identities/refs/<N>/<node>     -> {}                                 the node's lease

A new identity is one transaction: `id/N` and `labels/<key>` must both not exist, and are written
together with this node's reference. So a number never holds two label sets (the create on `id/N`
fails for the second), and a label set never gets two numbers (the create on `labels/<key>` fails,
the loser reads the winner's number). Taking a reference on an existing identity is a transaction
conditioned on `id/N` being unchanged, and deleting an identity (garbage collection) one
conditioned on `id/N` unchanged and no key under `refs/N/`: a collection and a new reference
cannot both succeed.

References live under the node's lease: a node that dies loses them when the lease expires, and
the other nodes then delete the identities nobody references. Each node mirrors `refs/` (a
reflector: list, then watch) and tries to collect an identity shortly after its last reference
went or when it appears unreferenced (cilia.kvstore.identity_gc.CollectionTrigger); a node
releasing its last reference collects at once; a full pass over `refs/` and `id/`
(`collect_garbage`) runs at start and then only every `gc_interval` (10 min) as a safety net.

The cluster's identities are reflected into memory (`cilia/identities/id/`, subscribers told of
each one appearing or going) and written to a cache file with the numbers this node uses, so an
agent restarting while etcd is down restores its endpoints with the same numbers and still
resolves remote ones; the references are written once the store answers again (and again under
each new lease)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cilia.identity.allocator import Identity, IdentityExhausted, _reserved
from cilia.identity.labels import LabelSet
from cilia.identity.reserved import MAX_CLUSTER_IDENTITY, MIN_CLUSTER_IDENTITY
from cilia.jsonfile import read_json, write_json
from cilia.kvstore.api import Cmp, Delete, KvClient, KvError, Put, WatchEvent
from cilia.kvstore.identity_gc import CollectionTrigger
from cilia.kvstore.reflector import PrefixReflector
from cilia.kvstore.session import NodeSession

log = logging.getLogger(__name__)

PREFIX = "cilia/identities/"
ID_PREFIX = PREFIX + "id/"
LABELS_PREFIX = PREFIX + "labels/"
REFS_PREFIX = PREFIX + "refs/"
_ATTEMPTS = 64  # lost races per allocation before giving up (each loss means another node won)

Listener = Callable[[Identity, bool], None]


class BadRecord(ValueError):
    """A key or value under cilia/identities/ this code cannot read (logged with the key, skipped)."""


# ----- codecs: everything read from the store goes through these ----------------------------------
def encode_identity(labels: LabelSet) -> bytes:
    return json.dumps({"labels": [str(label) for label in labels]}, separators=(",", ":")).encode()


def decode_identity(key: str, value: bytes) -> tuple[int, LabelSet]:
    """`cilia/identities/id/<N>` -> (N, labels); BadRecord naming the key for anything else."""
    number = _number(key, key.removeprefix(ID_PREFIX) if key.startswith(ID_PREFIX) else "")
    body = _json_object(key, value)
    texts = body.get("labels")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise BadRecord(f"{key}: 'labels' must be a non-empty list of strings")
    try:
        labels = LabelSet.parse_many(texts)
    except ValueError as exc:
        raise BadRecord(f"{key}: {exc}") from exc
    return number, labels


def decode_labels_entry(key: str, value: bytes) -> int:
    """`cilia/identities/labels/<key>` -> N; BadRecord naming the key for anything else."""
    body = _json_object(key, value)
    number = body.get("id")
    if isinstance(number, bool) or not isinstance(number, int) or \
            not MIN_CLUSTER_IDENTITY <= number <= MAX_CLUSTER_IDENTITY:
        raise BadRecord(f"{key}: 'id' must be a cluster identity ({MIN_CLUSTER_IDENTITY}-{MAX_CLUSTER_IDENTITY})")
    return number


def decode_ref_key(key: str) -> tuple[int, str]:
    """`cilia/identities/refs/<N>/<node>` -> (N, node)."""
    rest = key.removeprefix(REFS_PREFIX) if key.startswith(REFS_PREFIX) else ""
    number, sep, node = rest.partition("/")
    if not sep or not node or "/" in node:
        raise BadRecord(f"{key}: not refs/<N>/<node>")
    return _number(key, number), node


def _number(key: str, text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 6 or text != str(int(text)):
        # one spelling per number: `id/0256` must not pass for `id/256`
        raise BadRecord(f"{key}: {text!r} is not an identity number")
    number = int(text)
    if not MIN_CLUSTER_IDENTITY <= number <= MAX_CLUSTER_IDENTITY:
        raise BadRecord(f"{key}: {number} is outside {MIN_CLUSTER_IDENTITY}-{MAX_CLUSTER_IDENTITY}")
    return number


def _json_object(key: str, value: bytes) -> dict[str, Any]:
    try:
        body = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRecord(f"{key}: value is not JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise BadRecord(f"{key}: value is not a JSON object")
    return body


# ----- the allocator -------------------------------------------------------------------------------
class EtcdIdentityAllocator:
    def __init__(self, kv: KvClient, node: str, session: NodeSession, cache_file: Path,
                 gc_interval: float = 600.0, gc_delay: float | None = 1.0) -> None:
        """`gc_interval`: seconds between full passes (the safety net); `gc_delay`: seconds after
        an identity's last reference went (plus up to as much again, at random) before this node
        tries to collect it; None: no watch on `refs/` (full passes and own releases only)."""
        self.kv = kv
        self.node = node
        self.session = session
        self._cache_file = cache_file
        self._gc_interval = gc_interval
        self._lock = threading.RLock()  # local state; never held across a store call
        self._remote = threading.Lock()  # one allocation's store round-trips at a time
        self._save_lock = threading.Lock()
        self._reserved = _reserved()
        cache = read_json(cache_file, {})
        self._view: dict[int, LabelSet] = {}  # the cluster's identities as last seen
        seed: dict[str, bytes] = {}
        for number_text, texts in dict(cache.get("cluster", {})).items():
            try:
                key = f"{ID_PREFIX}{int(number_text)}"
                value = encode_identity(LabelSet.parse_many(texts))
                self._view[decode_identity(key, value)[0]] = LabelSet.parse_many(texts)
                seed[key] = value
            except (ValueError, TypeError) as exc:
                log.warning("identity cache %s: entry %r skipped: %s", cache_file, number_text, exc)
        # labels key -> N for the identities this node used: the same numbers after a restart
        self._local: dict[str, int] = {k: int(v) for k, v in dict(cache.get("local", {})).items()
                                       if isinstance(v, int)}
        self._refs: dict[int, int] = {}  # local reference counts
        self._published: set[int] = set()  # refs/N/<node> written under the current lease
        self._unreleased: set[int] = set()  # released while etcd was away: reference still to delete
        self._announced: set[int] = set(self._view)
        self._listeners: list[Listener] = []
        self._reflector = PrefixReflector(kv, ID_PREFIX, self._on_event, initial=seed, name="identities")
        self._trigger: CollectionTrigger | None = None
        self._refs_reflector: PrefixReflector | None = None
        self._trigger_primed = False
        if gc_delay is not None:
            self._trigger = CollectionTrigger(gc_delay, gc_delay, time.monotonic)
            # which keys exist is all that counts (values are "{}"): one put per new key, no values held
            self._refs_reflector = PrefixReflector(kv, REFS_PREFIX, self._on_ref_event, name="identity-refs",
                                                   keys_only=True)
        self.watched_collections = 0  # identities this node collected on the watch's trigger
        self.watched_candidates = 0  # candidates the watch made due and this node looked at (tests)
        self._dirty = threading.Event()  # the view changed since the cache file was written
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        session.on_new_lease(self._on_new_lease)

    # ----- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Watch the cluster's identities; publish pending references and collect garbage in the
        background."""
        self._reflector.start()
        if self._refs_reflector is not None:
            self._refs_reflector.start()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"cilia-identities-{self.node}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._reflector.stop()
        if self._refs_reflector is not None:
            self._refs_reflector.stop()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._dirty.is_set():
            self._dirty.clear()
            self._save()

    def wait_synced(self, timeout: float) -> bool:
        return self._reflector.wait_synced(timeout)

    @property
    def synced(self) -> bool:
        return self._reflector.synced

    def subscribe(self, listener: Listener) -> None:
        """listener(identity, added) when an identity appears in the cluster (added) or goes."""
        self._listeners.append(listener)

    # ----- IdentityAllocator ---------------------------------------------------------------------
    def allocate(self, labels: LabelSet) -> Identity:
        key = labels.key()
        with self._lock:
            number = self._local.get(key)
            if number is not None and self._refs.get(number, 0) > 0:
                self._refs[number] += 1
                return Identity(number, labels, False, self._refs[number])
        try:
            with self._remote:
                number = self._allocate_remote(labels)
        except KvError:
            # etcd away: a number this node used before (cached) is still ours to use; the
            # reference is written when the store answers
            with self._lock:
                number = self._local.get(key)
                if number is None:
                    raise
                log.warning("identity for %s: kvstore unreachable, using cached %d", key, number)
        with self._lock:
            changed = self._local.get(key) != number
            self._local[key] = number
            self._refs[number] = self._refs.get(number, 0) + 1
            identity = Identity(number, labels, False, self._refs[number])
            new = number not in self._announced
            self._announced.add(number)
            self._view.setdefault(number, labels)
        if changed:
            self._save()  # this node's numbers: at once (a restart while etcd is down needs them)
        if new:
            self._notify(Identity(number, labels), True)
        return identity

    def release(self, labels: LabelSet) -> bool:
        key = labels.key()
        with self._lock:
            number = self._local.get(key)
            if number is None or self._refs.get(number, 0) <= 0:
                return False
            self._refs[number] -= 1
            if self._refs[number] > 0:
                return True
            del self._refs[number]
            del self._local[key]
            self._published.discard(number)
        self._save()
        try:
            self._drop_reference(number)
        except KvError as exc:
            log.warning("identity %d: releasing while the kvstore is away (%s); retried later", number, exc)
            with self._lock:
                self._unreleased.add(number)
        return True

    def _drop_reference(self, number: int) -> None:
        """Delete this node's reference to `number` (unless it is taken again meanwhile) and
        collect the identity if that was the last one."""
        with self._remote:
            with self._lock:
                if self._refs.get(number, 0) > 0:
                    self._unreleased.discard(number)
                    return  # taken again meanwhile (its reference is written)
            self.kv.delete(self._ref_key(number))
            with self._lock:
                self._unreleased.discard(number)
            self._collect(number)

    def lookup_by_id(self, identity_id: int) -> Identity | None:
        if identity_id in self._reserved:
            return Identity(identity_id, self._reserved[identity_id], True)
        with self._lock:
            labels = self._view.get(identity_id)
            return Identity(identity_id, labels, False, self._refs.get(identity_id, 0)) if labels else None

    def all(self) -> list[Identity]:
        reserved = [Identity(i, labels, True) for i, labels in self._reserved.items()]
        with self._lock:
            cluster = [Identity(i, labels, False, self._refs.get(i, 0)) for i, labels in self._view.items()]
        return sorted(reserved + cluster, key=lambda identity: identity.id)

    def forget_unreferenced(self) -> int:
        """After restore: the cached numbers no endpoint took again are no longer this node's
        (its references to them, if an old lease still holds any, are deleted)."""
        with self._lock:
            stale = {key: n for key, n in self._local.items() if self._refs.get(n, 0) == 0}
            for key in stale:
                del self._local[key]
        if stale:
            self._save()
        for number in stale.values():
            with contextlib.suppress(KvError):  # else under the old lease: it expires by itself
                self.kv.delete(self._ref_key(number))
        return len(stale)

    # ----- the store side ------------------------------------------------------------------------
    def _ref_key(self, number: int) -> str:
        return f"{REFS_PREFIX}{number}/{self.node}"

    def _allocate_remote(self, labels: LabelSet) -> int:
        key = labels.key()
        labels_key = LABELS_PREFIX + key
        lease = self.session.lease
        lost: set[int] = set()
        for _ in range(_ATTEMPTS):
            entry = self.kv.get(labels_key)
            if entry is not None:
                number = self._existing(labels, entry.key, entry.value, entry.mod_revision, lease)
                if number is not None:
                    return number
                continue
            with self._lock:
                preferred = self._local.get(key)
                used = set(self._view) | lost
            number = preferred if preferred is not None and preferred not in lost else self._next_free(used)
            created = self.kv.txn(
                [Cmp(f"{ID_PREFIX}{number}", 0), Cmp(labels_key, 0)],
                [Put(f"{ID_PREFIX}{number}", encode_identity(labels)),
                 Put(labels_key, json.dumps({"id": number}).encode()),
                 Put(self._ref_key(number), b"{}", lease)])
            if created:
                with self._lock:
                    self._published.add(number)
                return number
            lost.add(number)  # another node took the number, or the labels meanwhile: look again
        raise KvError(f"identity for {key}: lost {_ATTEMPTS} allocation races in a row")

    def _existing(self, labels: LabelSet, key: str, value: bytes, labels_revision: int, lease: int) -> int | None:
        """Take a reference on the identity `labels/<key>` names; None when the entry is stale or
        garbage (then removed, so the caller allocates again)."""
        try:
            number = decode_labels_entry(key, value)
        except BadRecord as exc:
            log.warning("identity: %s; replacing it", exc)
            self.kv.delete_if(key, labels_revision)
            return None
        identity = self.kv.get(f"{ID_PREFIX}{number}")
        same = False
        if identity is not None:
            try:
                same = decode_identity(identity.key, identity.value)[1] == labels
            except BadRecord as exc:
                log.warning("identity: %s", exc)
        if identity is None or not same:
            # half of a collection, or written by hand: the labels entry points at nothing of ours
            log.warning("identity: %s points at %d which holds other labels (or none); replacing it", key, number)
            self.kv.delete_if(key, labels_revision)
            return None
        if self.kv.txn([Cmp(identity.key, identity.mod_revision)], [Put(self._ref_key(number), b"{}", lease)]):
            with self._lock:
                self._published.add(number)
            return number
        return None  # collected meanwhile: look again

    def _next_free(self, used: set[int]) -> int:
        for candidate in range(MIN_CLUSTER_IDENTITY, MAX_CLUSTER_IDENTITY + 1):
            if candidate not in used:
                return candidate
        raise IdentityExhausted(f"all {MAX_CLUSTER_IDENTITY - MIN_CLUSTER_IDENTITY + 1} cluster identities are in use")

    def publish(self) -> int:
        """Write this node's reference for every identity it uses and has not written under the
        current lease (after etcd was away, after a new lease); how many were written."""
        with self._lock:
            wanted = {n: key for key, n in self._local.items() if self._refs.get(n, 0) > 0
                      and n not in self._published}
        if not wanted:
            return 0
        lease = self.session.lease
        written = 0
        for number, key in wanted.items():
            labels = LabelSet.parse_many(key.split(";"))
            with self._remote:
                entry = self.kv.get(f"{LABELS_PREFIX}{key}")
                got = self._existing(labels, entry.key, entry.value, entry.mod_revision, lease) \
                    if entry is not None else None
                if got is None:
                    got = self._allocate_remote(labels)
            if got != number:
                # the identity was collected while this node could not hold its reference, and the
                # number went to other labels: the endpoints keep the old number until relabeled
                log.error("identity for %s: cluster number is now %d, this node used %d", key, got, number)
            written += 1
        return written

    def collect_garbage(self) -> int:
        """Delete every identity no node references; how many were deleted."""
        refs, _ = self.kv.list_prefix(REFS_PREFIX)
        referenced: set[int] = set()
        for entry in refs:
            try:
                referenced.add(decode_ref_key(entry.key)[0])
            except BadRecord as exc:
                log.warning("identity: %s; skipped", exc)
        ids, _ = self.kv.list_prefix(ID_PREFIX)
        deleted = 0
        for entry in ids:
            try:
                number, _labels = decode_identity(entry.key, entry.value)
            except BadRecord:
                continue  # garbage is logged by the reflector, never deleted by a guess
            if number not in referenced and self._collect(number, entry.mod_revision, entry.value):
                deleted += 1
        return deleted

    def _collect(self, number: int, mod_revision: int | None = None, value: bytes | None = None) -> bool:
        """Delete identity `number` if no node references it (atomically with that check)."""
        id_key = f"{ID_PREFIX}{number}"
        if mod_revision is None or value is None:
            entry = self.kv.get(id_key)
            if entry is None:
                return False
            mod_revision, value = entry.mod_revision, entry.value
        try:
            _, labels = decode_identity(id_key, value)
        except BadRecord:
            return False
        labels_key = LABELS_PREFIX + labels.key()
        labels_entry = self.kv.get(labels_key)
        compares = [Cmp(id_key, mod_revision), Cmp(f"{REFS_PREFIX}{number}/", 0, prefix=True)]
        ops: list[Put | Delete] = [Delete(id_key)]
        if labels_entry is not None:
            try:
                points_here = decode_labels_entry(labels_key, labels_entry.value) == number
            except BadRecord:
                points_here = False
            if points_here:
                compares.append(Cmp(labels_key, labels_entry.mod_revision))
                ops.append(Delete(labels_key))
        if self.kv.txn(compares, ops):
            log.info("identity %d (%s) collected: no node references it", number, labels.key())
            return True
        return False

    # ----- background ----------------------------------------------------------------------------
    def _on_new_lease(self, lease: int) -> None:
        with self._lock:
            self._published.clear()  # the old lease's references are gone (or going)
        self._wake.set()

    def _run(self) -> None:
        next_gc = 0.0
        waited = 0.0
        started = time.monotonic()
        while not self._stop.is_set():
            if self._dirty.is_set():
                self._dirty.clear()
                self._save()
            try:
                with self._lock:
                    unreleased = sorted(self._unreleased)
                for number in unreleased:
                    self._drop_reference(number)
                if self.session.has_lease:
                    self.publish()
                    if waited >= next_gc:
                        self.collect_garbage()
                        next_gc = waited + self._gc_interval
                    self._collect_due()
            except KvError as exc:
                log.debug("identities: kvstore not reachable: %s", exc)
            due = self._trigger.next_due() if self._trigger is not None else None
            self._wake.wait(1.0 if due is None else min(1.0, max(0.05, due)))
            self._wake.clear()
            waited = time.monotonic() - started

    def _collect_due(self) -> int:
        """Collect the identities the watch made due (once the references were listed); how many."""
        trigger, refs = self._trigger, self._refs_reflector
        if trigger is None or refs is None or not refs.synced:
            return 0
        if not self._trigger_primed:  # listed: every identity without a reference is a candidate
            self._trigger_primed = True
            with self._lock:
                trigger.consider(list(self._view))
        collected = 0
        due = trigger.due()
        for i, number in enumerate(due):
            self.watched_candidates += 1
            with self._lock:
                if self._refs.get(number, 0) > 0 or number not in self._view:
                    continue  # used here (its reference is written or about to be), or gone already
            try:
                done = self._collect(number)
            except KvError:
                trigger.consider(due[i:])  # tried again once the store answers
                raise
            collected += done
            self.watched_collections += done
        return collected

    def _on_ref_event(self, event: WatchEvent) -> None:
        try:
            number, _node = decode_ref_key(event.key)
        except BadRecord:
            return  # logged by the full pass, which skips it too
        if self._trigger is None:
            return
        if event.kind == "put":
            self._trigger.reference_added(number)
        else:
            self._trigger.reference_removed(number)
            self._wake.set()

    # ----- the cluster view ----------------------------------------------------------------------
    def _on_event(self, event: WatchEvent) -> None:
        if event.kind == "delete":
            try:
                number, labels = decode_identity(event.key, event.value)
            except BadRecord:
                return  # the garbage that went was logged when it came
            with self._lock:
                # still used here (collected while this node's lease was lost): keep resolving it
                # until publish() has written it again
                gone = self._refs.get(number, 0) == 0
                if gone:
                    self._view.pop(number, None)
                    gone = number in self._announced
                    self._announced.discard(number)
            if self._trigger is not None:
                self._trigger.identity_removed(number)
            if gone:
                self._dirty.set()
                self._notify(Identity(number, labels), False)
            return
        try:
            number, labels = decode_identity(event.key, event.value)
        except BadRecord as exc:
            log.warning("identity: %s; skipped", exc)
            return
        with self._lock:
            old = self._view.get(number)
            self._view[number] = labels
            new = number not in self._announced
            self._announced.add(number)
        if self._trigger is not None:
            self._trigger.identity_added(number)
        if old != labels:
            self._dirty.set()  # the cluster's identities: saved by the background round
        if new:
            self._notify(Identity(number, labels), True)
        elif old is not None and old != labels:
            self._notify(Identity(number, old), False)
            self._notify(Identity(number, labels), True)

    def _notify(self, identity: Identity, added: bool) -> None:
        for listener in self._listeners:
            try:
                listener(identity, added)
            except Exception:
                log.exception("identity listener failed on %d", identity.id)

    def _save(self) -> None:
        with self._save_lock:
            with self._lock:
                state = {"cluster": {str(n): [str(label) for label in labels] for n, labels in self._view.items()},
                         "local": dict(self._local)}
            try:
                write_json(self._cache_file, state)
            except OSError as exc:
                log.warning("identity cache %s: %s", self._cache_file, exc)
