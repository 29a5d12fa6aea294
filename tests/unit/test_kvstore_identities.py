"""EtcdIdentityAllocator on MemoryKv: same labels -> same number on every node, never two label
sets on one number (also with threads racing), references under the node lease, garbage
collection of unreferenced identities (a dead node's too), garbage in the store logged and
skipped, a restart with the store down served from the cache file."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cilia.identity.allocator import Identity
from cilia.identity.labels import LabelSet
from cilia.kvstore.api import KvError
from cilia.kvstore.identities import ID_PREFIX, LABELS_PREFIX, REFS_PREFIX, EtcdIdentityAllocator
from cilia.kvstore.memory import ManualClock, MemoryKv
from cilia.kvstore.session import NodeSession
from cilia.testing.wait import wait_for


def labels(app: str, ns: str = "default") -> LabelSet:
    return LabelSet.from_k8s({"app": app}, ns)


class Node:
    """An allocator with the periodic full pass and (unless `gc_delay` is given) the watch-driven
    collection off, so a test sees what its own calls do."""

    def __init__(self, kv: MemoryKv, name: str, tmp: Path, ttl: int = 10, gc_delay: float | None = None) -> None:
        self.session = NodeSession(kv, name, ttl_seconds=ttl)
        self.session.step()
        self.allocator = EtcdIdentityAllocator(kv, name, self.session, tmp / f"{name}.json", gc_interval=3600,
                                               gc_delay=gc_delay)
        self.events: list[tuple[int, bool]] = []
        self.allocator.subscribe(lambda identity, added: self.events.append((identity.id, added)))
        self.allocator.start()
        assert self.allocator.wait_synced(5)

    def stop(self) -> None:
        self.allocator.stop()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def kv(clock: ManualClock) -> Iterator[MemoryKv]:
    store = MemoryKv(clock)
    yield store
    store.close()


def _numbers(kv: MemoryKv) -> dict[int, str]:
    out = {}
    for entry in kv.list_prefix(ID_PREFIX)[0]:
        out[int(entry.key.removeprefix(ID_PREFIX))] = ";".join(json.loads(entry.value)["labels"])
    return out


def test_same_labels_same_number_on_every_node(kv: MemoryKv, tmp_path: Path) -> None:
    a, b = Node(kv, "a", tmp_path), Node(kv, "b", tmp_path)
    try:
        web_a = a.allocator.allocate(labels("web"))
        web_b = b.allocator.allocate(labels("web"))
        db_b = b.allocator.allocate(labels("db"))
        assert web_a.id == web_b.id != db_b.id
        assert kv.get(f"{REFS_PREFIX}{web_a.id}/a") is not None and kv.get(f"{REFS_PREFIX}{web_a.id}/b") is not None
        assert kv.get(f"{REFS_PREFIX}{web_a.id}/a").lease == a.session.lease  # type: ignore[union-attr]
        wait_for(lambda: a.allocator.lookup_by_id(db_b.id) is not None, 5)
        assert a.allocator.lookup_by_id(db_b.id).labels == labels("db")  # type: ignore[union-attr]
        wait_for(lambda: (db_b.id, True) in a.events, 5)
    finally:
        a.stop()
        b.stop()


def test_release_collects_only_when_no_node_references(kv: MemoryKv, tmp_path: Path) -> None:
    a, b = Node(kv, "a", tmp_path), Node(kv, "b", tmp_path)
    try:
        number = a.allocator.allocate(labels("web")).id
        b.allocator.allocate(labels("web"))
        a.allocator.allocate(labels("web"))
        assert a.allocator.release(labels("web")) and kv.get(f"{REFS_PREFIX}{number}/a") is not None
        assert a.allocator.release(labels("web")) and kv.get(f"{REFS_PREFIX}{number}/a") is None
        assert number in _numbers(kv)  # b still uses it
        assert not a.allocator.release(labels("web"))
        assert b.allocator.release(labels("web"))
        assert _numbers(kv) == {} and kv.list_prefix(LABELS_PREFIX)[0] == []
        wait_for(lambda: (number, False) in a.events, 5)
    finally:
        a.stop()
        b.stop()


def test_a_dead_nodes_references_expire_and_its_identities_are_collected(
        kv: MemoryKv, clock: ManualClock, tmp_path: Path) -> None:
    a, b = Node(kv, "a", tmp_path), Node(kv, "b", tmp_path)
    try:
        shared = a.allocator.allocate(labels("web")).id
        b.allocator.allocate(labels("web"))
        only_b = b.allocator.allocate(labels("db")).id
        b.stop()  # b dies: no more keepalives
        clock.advance(5)
        a.session.step()
        clock.advance(6)
        a.session.step()
        assert kv.get(f"{REFS_PREFIX}{only_b}/b") is None
        assert a.allocator.collect_garbage() == 1
        assert set(_numbers(kv)) == {shared}
    finally:
        a.stop()


def test_concurrent_allocators_never_share_a_number(kv: MemoryKv, tmp_path: Path) -> None:
    nodes = [Node(kv, f"n{i}", tmp_path) for i in range(3)]
    sets = [labels(f"app{i}") for i in range(120)]
    results: dict[str, dict[str, int]] = {}

    def run(node: Node) -> None:
        order = list(sets)
        random.Random(node.session.node).shuffle(order)
        results[node.session.node] = {s.key(): node.allocator.allocate(s).id for s in order}
    threads = [threading.Thread(target=run, args=(n,)) for n in nodes]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(results) == 3
        assert results["n0"] == results["n1"] == results["n2"]
        assert len(set(results["n0"].values())) == len(sets)
        stored = _numbers(kv)
        assert len(stored) == len(sets) and {v: k for k, v in results["n0"].items()} == stored
    finally:
        for node in nodes:
            node.stop()


def test_garbage_is_logged_with_its_key_and_skipped(kv: MemoryKv, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    kv.put(f"{ID_PREFIX}notanumber", b"{}")
    kv.put(f"{ID_PREFIX}300", b"\xff\xfe garbage")
    kv.put(f"{ID_PREFIX}301", b'{"labels": 5}')
    kv.put(f"{LABELS_PREFIX}{labels('web').key()}", b'{"id": "x"}')  # a bad labels entry for web
    a = Node(kv, "a", tmp_path)
    try:
        web = a.allocator.allocate(labels("web"))
        assert web.id not in (300, 301)
        for key in ("notanumber", "300", "301", "labels/"):
            assert key in caplog.text
        assert [i.id for i in a.allocator.all() if not i.reserved] == [web.id]
        kv.put(f"{ID_PREFIX}302", b"[[[")  # while watching
        wait_for(lambda: f"{ID_PREFIX}302" in caplog.text, 5)
        assert a.allocator.allocate(labels("db")).id not in (300, 301, 302, web.id)
    finally:
        a.stop()


def test_restart_with_the_store_down_uses_the_cache(kv: MemoryKv, tmp_path: Path) -> None:
    a = Node(kv, "a", tmp_path)
    b = Node(kv, "b", tmp_path)
    web = a.allocator.allocate(labels("web")).id
    db = b.allocator.allocate(labels("db")).id
    wait_for(lambda: a.allocator.lookup_by_id(db) is not None, 5)
    a.stop()
    kv.set_down(True)
    again = EtcdIdentityAllocator(kv, "a", a.session, tmp_path / "a.json")
    again.start()
    try:
        assert not again.wait_synced(0.2)
        assert again.allocate(labels("web")).id == web
        assert again.lookup_by_id(db) is not None  # remote identities known from the cache
        with pytest.raises(KvError):
            again.allocate(labels("new"))  # never seen: needs the store
        kv.set_down(False)
        assert again.wait_synced(5)
        again.publish()
        assert kv.get(f"{REFS_PREFIX}{web}/a") is not None
    finally:
        again.stop()
        b.stop()


def test_new_lease_rewrites_references(kv: MemoryKv, clock: ManualClock, tmp_path: Path) -> None:
    a = Node(kv, "a", tmp_path)
    try:
        web = a.allocator.allocate(labels("web")).id
        clock.advance(30)  # the lease is lost (agent stalled)
        kv.expire_leases()
        assert kv.get(f"{REFS_PREFIX}{web}/a") is None
        a.session.step()  # new lease, allocator told
        wait_for(lambda: kv.get(f"{REFS_PREFIX}{web}/a") is not None, 5)
        assert kv.get(f"{REFS_PREFIX}{web}/a").lease == a.session.lease  # type: ignore[union-attr]
    finally:
        a.stop()


def test_identity_records_are_identity_objects(kv: MemoryKv, tmp_path: Path) -> None:
    a = Node(kv, "a", tmp_path)
    try:
        identity = a.allocator.allocate(labels("web"))
        assert isinstance(identity, Identity) and identity.references == 1
        assert a.allocator.allocate(labels("web")).references == 2
        assert a.allocator.lookup_by_id(1) is not None and a.allocator.lookup_by_id(1).reserved  # type: ignore[union-attr]
        assert a.allocator.forget_unreferenced() == 0
    finally:
        a.stop()


def test_a_release_while_the_store_is_down_is_completed_later(kv: MemoryKv, tmp_path: Path) -> None:
    a = Node(kv, "a", tmp_path)
    try:
        web = a.allocator.allocate(labels("web")).id
        kv.set_down(True)
        assert a.allocator.release(labels("web"))
        kv.set_down(False)
        assert kv.get(f"{REFS_PREFIX}{web}/a") is not None  # still there: etcd was away
        wait_for(lambda: kv.get(f"{ID_PREFIX}{web}") is None, 5)  # the background round finished it
        assert kv.get(f"{REFS_PREFIX}{web}/a") is None
    finally:
        a.stop()


def test_an_identity_collected_while_the_lease_was_lost_comes_back_with_its_number(
        kv: MemoryKv, clock: ManualClock, tmp_path: Path) -> None:
    a, b = Node(kv, "a", tmp_path), Node(kv, "b", tmp_path)
    try:
        web = a.allocator.allocate(labels("web")).id
        clock.advance(30)  # a stalled past its TTL: its references are gone...
        b.session.step()
        assert b.allocator.collect_garbage() == 1  # ...and b collected the identity
        wait_for(lambda: b.allocator.lookup_by_id(web) is None, 5)
        assert a.allocator.lookup_by_id(web) is not None  # a's endpoints still resolve it
        a.session.step()  # a's new lease: its references are written again, the number kept
        wait_for(lambda: kv.get(f"{REFS_PREFIX}{web}/a") is not None, 5)
        assert _numbers(kv)[web] == labels("web").key()
        assert b.allocator.allocate(labels("web")).id == web
    finally:
        a.stop()
        b.stop()
