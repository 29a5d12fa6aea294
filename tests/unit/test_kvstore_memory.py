"""MemoryKv keeps the etcd semantics the cluster logic relies on: revisions, compare-and-swap,
leases expiring by the clock, watch replay from a revision, Compacted below the compaction."""

from __future__ import annotations

import threading

import pytest

from cilia.kvstore.api import Compacted, KvError, WatchEvent
from cilia.kvstore.memory import ManualClock, MemoryKv


def test_revisions_and_compare_and_swap() -> None:
    kv = MemoryKv()
    rev = kv.put("a", b"1")
    assert kv.get("a") is not None and kv.get("a").mod_revision == rev  # type: ignore[union-attr]
    assert not kv.create("a", b"2")
    assert kv.create("b", b"2")
    current = kv.get("a")
    assert current is not None
    assert kv.update_if("a", b"3", current.mod_revision)
    assert not kv.update_if("a", b"4", current.mod_revision)  # stale revision
    assert kv.get("a").value == b"3"  # type: ignore[union-attr]
    assert kv.get("a").create_revision == current.create_revision  # type: ignore[union-attr]
    assert not kv.delete_if("a", current.mod_revision)
    assert kv.delete_if("a", kv.get("a").mod_revision)  # type: ignore[union-attr]
    assert kv.get("a") is None
    kv.put("p/1", b"x")
    kv.put("p/2", b"y")
    kvs, revision = kv.list_prefix("p/")
    assert [k.key for k in kvs] == ["p/1", "p/2"] and revision == kv.revision
    assert kv.delete_prefix("p/") == 2
    assert kv.list_prefix("p/")[0] == []


def test_leases_expire_by_the_clock_and_delete_their_keys() -> None:
    clock = ManualClock()
    kv = MemoryKv(clock)
    lease = kv.grant_lease(10)
    kv.put("n/a", b"1", lease)
    kv.put("n/b", b"1", lease)
    kv.put("n/c", b"1")
    clock.advance(9)
    assert kv.keepalive(lease)
    clock.advance(9)
    assert kv.get("n/a") is not None
    clock.advance(2)
    assert kv.get("n/a") is None and kv.get("n/b") is None and kv.get("n/c") is not None
    assert not kv.keepalive(lease)
    with pytest.raises(KvError, match="lease"):
        kv.put("n/d", b"1", lease)


def test_a_put_without_the_lease_detaches_the_key() -> None:
    clock = ManualClock()
    kv = MemoryKv(clock)
    lease = kv.grant_lease(5)
    kv.put("k", b"1", lease)
    kv.put("k", b"2")
    clock.advance(6)
    assert kv.get("k") is not None


def test_watch_replays_from_a_revision_and_reports_compaction() -> None:
    kv = MemoryKv()
    first = kv.put("w/a", b"1")
    kv.put("other", b"x")
    kv.put("w/b", b"2")
    got: list[WatchEvent] = []
    errors: list[Exception] = []
    cancel = kv.watch_prefix("w/", first, lambda events, _rev: got.extend(events), errors.append)
    kv.delete("w/a")
    kv.settle()
    assert [(e.kind, e.key) for e in got] == [("put", "w/a"), ("put", "w/b"), ("delete", "w/a")]
    cancel()
    kv.put("w/c", b"3")
    kv.settle()
    assert len(got) == 3
    kv.compact()
    kv.watch_prefix("w/", first, lambda events, _rev: got.extend(events), errors.append)
    kv.settle()
    assert len(errors) == 1 and isinstance(errors[0], Compacted)
    # the compaction revision itself may still be watched from
    errors.clear()
    kv.watch_prefix("w/", kv.revision, lambda events, _rev: None, errors.append)
    kv.settle()
    assert errors == []


def test_down_store_raises_and_breaks_watches() -> None:
    kv = MemoryKv()
    errors: list[Exception] = []
    kv.watch_prefix("x/", 1, lambda events, _rev: None, errors.append)
    kv.set_down(True)
    kv.settle()
    assert len(errors) == 1 and isinstance(errors[0], KvError)
    with pytest.raises(KvError):
        kv.get("x/a")
    assert not kv.status().reachable
    kv.set_down(False)
    assert kv.status().reachable


def test_watch_callbacks_run_in_revision_order_from_many_writers() -> None:
    kv = MemoryKv()
    revisions: list[int] = []
    kv.watch_prefix("c/", 1, lambda events, _rev: revisions.extend(e.mod_revision for e in events),
                    lambda exc: None)

    def writer(n: int) -> None:
        for i in range(50):
            kv.put(f"c/{n}/{i}", b"v")
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    kv.settle()
    assert len(revisions) == 200 and revisions == sorted(revisions)
