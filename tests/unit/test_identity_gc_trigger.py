"""The identity collector driven by the `refs/` watch: the trigger's logic alone (a manual clock,
no jitter), then EtcdIdentityAllocators on MemoryKv collecting a dead node's identities from the
watch without listing `refs/`, and allocations racing with releases and watch-triggered
collections on three nodes (never two label sets on one number, every node agrees)."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_kvstore_identities import Node, labels

from cilia.kvstore.api import KeyValue
from cilia.kvstore.identities import ID_PREFIX, LABELS_PREFIX, REFS_PREFIX
from cilia.kvstore.identity_gc import CollectionTrigger
from cilia.kvstore.memory import ManualClock, MemoryKv
from cilia.kvstore.reflector import PrefixReflector
from cilia.testing.wait import wait_for


def ref(number: int, node: str) -> str:
    return f"{REFS_PREFIX}{number}/{node}"


@pytest.fixture
def now() -> ManualClock:
    return ManualClock()


@pytest.fixture
def trigger(now: ManualClock) -> CollectionTrigger:
    return CollectionTrigger(delay=2.0, jitter=0.0, clock=now)


def test_the_last_reference_going_makes_the_identity_due_after_the_delay(
        trigger: CollectionTrigger, now: ManualClock) -> None:
    trigger.identity_added(300)
    trigger.reference_added(300)
    trigger.reference_added(300)
    trigger.reference_removed(300)
    assert trigger.next_due() is None  # b still holds it
    trigger.reference_removed(300)
    assert trigger.next_due() == 2.0
    now.advance(1.9)
    assert trigger.due() == []
    now.advance(0.1)
    assert trigger.due() == [300]
    assert trigger.due() == [] and trigger.next_due() is None  # taken off the list


def test_a_reference_coming_back_or_the_identity_going_cancels(trigger: CollectionTrigger, now: ManualClock) -> None:
    for number in (300, 301):
        trigger.identity_added(number)
        trigger.reference_added(number)
        trigger.reference_removed(number)
    trigger.reference_added(300)  # taken again before it was due
    trigger.identity_removed(301)  # collected by another node
    now.advance(5)
    assert trigger.due() == []


def test_an_identity_appearing_unreferenced_is_a_candidate(trigger: CollectionTrigger, now: ManualClock) -> None:
    trigger.reference_added(400)  # its reference seen before the identity
    trigger.identity_added(400)
    trigger.identity_added(401)  # no reference (yet)
    trigger.consider([402])  # e.g. from the cache, once the references were listed
    now.advance(2)
    assert trigger.due() == [401, 402]
    # its reference arriving late (another watch) also cancels
    trigger.identity_added(403)
    trigger.reference_added(403)
    now.advance(2)
    assert trigger.due() == []


def test_the_references_reflector_hands_over_each_key_once(now: ManualClock) -> None:
    """Keys only: a put reaches the trigger when its key is new (not when its value changes, e.g.
    garbage written over it), a delete when it goes; no values are held."""
    kv = MemoryKv(now)
    seen: list[tuple[str, str, bytes]] = []
    kv.put(ref(500, "a"), b"{}")
    reflector = PrefixReflector(kv, REFS_PREFIX, lambda e: seen.append((e.kind, e.key, e.value)), keys_only=True)
    reflector.start()
    try:
        assert reflector.wait_synced(5)
        kv.put(ref(500, "a"), b"garbage")
        kv.put(ref(500, "b"), b"{}")
        kv.delete(ref(500, "a"))
        wait_for(lambda: len(seen) == 3, 5)
        kv.settle()
        assert seen == [("put", ref(500, "a"), b"{}"), ("put", ref(500, "b"), b"{}"), ("delete", ref(500, "a"), b"")]
        assert reflector.items() == {ref(500, "b"): b""}
    finally:
        reflector.stop()
        kv.close()


def test_counts_per_identity(trigger: CollectionTrigger, now: ManualClock) -> None:
    trigger.identity_added(500)
    trigger.reference_added(500)
    trigger.reference_added(500)
    assert trigger.referenced(500) == 2
    trigger.reference_removed(500)
    assert trigger.referenced(500) == 1 and trigger.next_due() is None
    trigger.reference_removed(500)
    assert trigger.referenced(500) == 0
    now.advance(2)
    assert trigger.due() == [500]


def test_jitter_spreads_the_nodes(now: ManualClock) -> None:
    spread = [CollectionTrigger(1.0, 1.0, now, rand=lambda r=r: r) for r in (0.0, 0.5, 1.0)]
    for trigger in spread:
        trigger.identity_added(600)
    assert [t.next_due() for t in spread] == [1.0, 1.5, 2.0]


# ----- on MemoryKv -----------------------------------------------------------------------------------
class CountingKv(MemoryKv):
    """MemoryKv counting the lists of `refs/` (the full pass)."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.ref_lists = 0

    def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        if prefix == REFS_PREFIX:
            self.ref_lists += 1
        return super().list_prefix(prefix)


@pytest.fixture
def kv(now: ManualClock) -> Iterator[CountingKv]:
    store = CountingKv(now)
    yield store
    store.close()


def _ids(kv: MemoryKv) -> set[int]:
    return {int(e.key.removeprefix(ID_PREFIX)) for e in kv.list_prefix(ID_PREFIX)[0]}


def test_a_dead_nodes_identities_are_collected_from_the_watch(kv: CountingKv, now: ManualClock,
                                                             tmp_path: Path) -> None:
    a = Node(kv, "a", tmp_path, gc_delay=0.05)
    b = Node(kv, "b", tmp_path, gc_delay=0.05)
    try:
        shared = a.allocator.allocate(labels("web")).id
        b.allocator.allocate(labels("web"))
        only_b = {b.allocator.allocate(labels(f"db{i}")).id for i in range(3)}
        wait_for(lambda: a.allocator.synced and kv.ref_lists >= 2, 5)  # each node's full pass at start
        lists = kv.ref_lists
        b.stop()  # b dies: no more keepalives
        now.advance(11)
        a.session.step()  # a keeps its lease; b's expired: etcd deleted its references
        assert all(kv.get(ref(n, "b")) is None for n in only_b)
        wait_for(lambda: _ids(kv) == {shared}, 5)  # collected without anyone calling collect_garbage
        assert kv.ref_lists == lists  # ...and without listing refs/ again
        assert a.allocator.watched_collections == len(only_b)
        assert {e.key for e in kv.list_prefix(LABELS_PREFIX)[0]} == {LABELS_PREFIX + labels("web").key()}
        wait_for(lambda: all(a.allocator.lookup_by_id(n) is None for n in only_b), 5)
        assert a.allocator.lookup_by_id(shared) is not None
    finally:
        a.stop()


def test_an_identity_this_node_uses_is_never_collected_by_the_watch(kv: CountingKv, now: ManualClock,
                                                                   tmp_path: Path) -> None:
    """The lease lost (an agent stalled): its references are gone, but it still uses the identity
    and writes them again under its new lease; the watch must not collect it meanwhile."""
    a = Node(kv, "a", tmp_path, gc_delay=0.01)
    try:
        web = a.allocator.allocate(labels("web")).id
        now.advance(30)
        kv.expire_leases()
        assert kv.get(ref(web, "a")) is None
        wait_for(lambda: a.allocator.watched_candidates >= 1, 5)  # the watch made it due, a looked
        assert web in _ids(kv) and a.allocator.watched_collections == 0
        a.session.step()  # the new lease
        wait_for(lambda: kv.get(ref(web, "a")) is not None, 5)
        assert web in _ids(kv) and a.allocator.watched_collections == 0
    finally:
        a.stop()


def test_allocations_race_releases_and_watched_collections(kv: CountingKv, tmp_path: Path) -> None:
    nodes = [Node(kv, f"n{i}", tmp_path, gc_delay=0.01) for i in range(3)]
    sets = [labels(f"app{i}") for i in range(30)]
    held: dict[str, dict[str, int]] = {}
    errors: list[BaseException] = []

    def run(node: Node) -> None:
        name = node.session.node
        rng = random.Random(name)
        mine: dict[str, int] = {}
        try:
            for _ in range(150):
                chosen = rng.choice(sets)
                if chosen.key() in mine and rng.random() < 0.5:
                    node.allocator.release(chosen)
                    del mine[chosen.key()]
                elif chosen.key() not in mine:
                    mine[chosen.key()] = node.allocator.allocate(chosen).id
        except BaseException as exc:  # reported below
            errors.append(exc)
        held[name] = mine

    threads = [threading.Thread(target=run, args=(n,)) for n in nodes]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors and len(held) == 3
        numbers: dict[str, int] = {}
        for mine in held.values():
            for key, number in mine.items():
                assert numbers.setdefault(key, number) == number  # every node agrees
        assert len(set(numbers.values())) == len(numbers)  # never two label sets on one number
        # what is held is in the store, with its labels and each holder's reference
        stored: dict[int, str] = {}
        for entry in kv.list_prefix(ID_PREFIX)[0]:
            stored[int(entry.key.removeprefix(ID_PREFIX))] = ";".join(json.loads(entry.value)["labels"])
        for name, mine in held.items():
            for key, number in mine.items():
                assert stored.get(number) == key and kv.get(ref(number, name)) is not None
        # and what nobody holds is collected by the watch alone
        wait_for(lambda: _ids(kv) == set(numbers.values()), 10)
    finally:
        for node in nodes:
            node.stop()
