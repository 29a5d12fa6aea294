"""Load-balancer id allocation: stability, reuse through the free list, exhaustion, restore."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from cilia.lb.ids import IdAllocator, IdExhausted


@dataclass(frozen=True)
class Frontend:
    address: str
    port: int


def test_allocates_in_order_and_same_key_same_id() -> None:
    ids: IdAllocator[str] = IdAllocator("service", 1, 100)
    assert [ids.allocate(k) for k in ("a", "b", "c")] == [1, 2, 3]
    assert ids.allocate("b") == 2
    assert ids.get("c") == 3 and ids.get("z") is None
    assert len(ids) == 3
    assert ids.items() == {"a": 1, "b": 2, "c": 3}


def test_items_is_a_copy() -> None:
    ids: IdAllocator[str] = IdAllocator("service", 1, 10)
    ids.allocate("a")
    ids.items()["b"] = 5
    assert ids.get("b") is None and len(ids) == 1


def test_frozen_dataclass_keys() -> None:
    ids: IdAllocator[Frontend] = IdAllocator("rev-nat", 1, 10)
    first = ids.allocate(Frontend("10.96.0.1", 443))
    assert ids.allocate(Frontend("10.96.0.1", 443)) == first
    assert ids.allocate(Frontend("10.96.0.1", 80)) != first


def test_release_and_reuse_lowest_freed_first() -> None:
    ids: IdAllocator[str] = IdAllocator("backend", 10, 100)
    for k in "abcde":
        ids.allocate(k)  # a=10 .. e=14
    assert ids.release("d") == 13
    assert ids.release("b") == 11
    assert ids.release("b") is None and ids.release("never") is None
    assert len(ids) == 3
    assert ids.allocate("f") == 11  # freed ids first, lowest first
    assert ids.allocate("g") == 13
    assert ids.allocate("h") == 15  # free list empty: next never-used id
    assert ids.allocate("a") == 10  # still held, unchanged


def test_exhaustion_names_allocator_and_range() -> None:
    ids: IdAllocator[str] = IdAllocator("service", 5, 7)
    assert [ids.allocate(k) for k in "abc"] == [5, 6, 7]
    with pytest.raises(IdExhausted, match=r"service: all 3 ids in \[5, 7\] are in use"):
        ids.allocate("d")
    assert ids.allocate("a") == 5  # held keys still answer
    ids.release("b")
    assert ids.allocate("d") == 6


def test_empty_range_rejected() -> None:
    with pytest.raises(ValueError, match=r"backend: empty id range \[5, 4\]"):
        IdAllocator[str]("backend", 5, 4)


def test_restore_takes_exact_ids_and_frees_the_gaps() -> None:
    ids: IdAllocator[str] = IdAllocator("service", 1, 10)
    ids.allocate("stale")
    ids.restore({"a": 3, "b": 7, "c": 1})
    assert ids.items() == {"a": 3, "b": 7, "c": 1}
    assert ids.get("stale") is None  # restore replaces, it does not merge
    assert [ids.allocate(k) for k in ("d", "e", "f", "g", "h")] == [2, 4, 5, 6, 8]
    assert ids.allocate("a") == 3


def test_restore_empty_starts_over() -> None:
    ids: IdAllocator[str] = IdAllocator("service", 1, 10)
    ids.allocate("a")
    ids.allocate("b")
    ids.restore({})
    assert len(ids) == 0
    assert ids.allocate("c") == 1


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        ({"a": 3, "b": 3}, r"id 3 for both 'a' and 'b'"),
        ({"a": 0}, r"'a' -> 0: outside \[1, 10\]"),
        ({"a": 11}, r"'a' -> 11: outside \[1, 10\]"),
    ],
)
def test_restore_rejects_and_keeps_state(assignments: dict[str, int], message: str) -> None:
    ids: IdAllocator[str] = IdAllocator("service", 1, 10)
    ids.allocate("x")
    with pytest.raises(ValueError, match=message):
        ids.restore(assignments)
    assert ids.items() == {"x": 1}
    assert ids.allocate("y") == 2
