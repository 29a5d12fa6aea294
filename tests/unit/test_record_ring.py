"""RecordRing (the event pump's decoded-event ring): raw records kept as they came, entries made
on read, and the same reading behaviour as a FlowRing fed the same batches."""

from __future__ import annotations

import asyncio

import pytest

from cilia.flows.build import Flow
from cilia.flows.filter import FlowFilter
from cilia.flows.ring import EntrySubscriber, FlowRing, RecordRing, Subscriber


class _Context:
    """Builds a record b"<n>" into {"n": n}; b"bad" does not decode."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.built = 0

    def build(self, record: bytes, flow_id: str) -> Flow | None:
        self.built += 1
        if record == b"bad":
            return None
        return {"n": int(record), "tag": self.tag, "uuid": flow_id}

    def encode(self, record: bytes, flow_id: str) -> bytes | None:
        return None


def _batches(ring: FlowRing, contexts: list[_Context], count: int, size: int) -> None:
    n = 0
    for index in range(count):
        ring.add_records([str(n + k).encode() for k in range(size)], contexts[index % len(contexts)])
        n += size


def test_reads_as_a_flow_ring_does_and_builds_only_when_read() -> None:
    lazy_contexts, eager_contexts = [_Context("a"), _Context("b")], [_Context("a"), _Context("b")]
    lazy, eager = RecordRing(10), FlowRing(10)
    _batches(lazy, lazy_contexts, 5, 4)
    _batches(eager, eager_contexts, 5, 4)
    assert sum(c.built for c in lazy_contexts) == 0  # nothing made at ingest
    assert (len(lazy), lazy.seen, lazy.sequence) == (len(eager), eager.seen, eager.sequence) == (10, 20, 20)
    strip = [{k: v for k, v in flow.items() if k != "uuid"} for flow in eager.last(7, FlowFilter())]
    assert [{k: v for k, v in flow.items() if k != "uuid"} for flow in lazy.last(7, FlowFilter())] == strip
    assert [f["n"] for f in strip] == list(range(13, 20))
    assert [f["tag"] for f in strip] == ["b", "b", "b", "a", "a", "a", "a"]  # each record keeps its batch's context
    cursor, entries, missed = lazy.since(5)
    assert (cursor, missed) == (20, 5)  # 6..10 were overwritten
    assert [e.seq for e in entries] == list(range(11, 21))
    assert [e.get()["n"] for e in entries] == list(range(10, 20))  # type: ignore[index]
    assert lazy.since(18)[1][0].seq == 19
    assert lazy.since(20)[1] == []
    assert lazy.since(20)[1] == []


def test_undecodable_records_are_skipped_and_add_is_refused() -> None:
    ring = RecordRing(8)
    ring.add_records([b"1", b"bad", b"3"], _Context("a"))
    assert [f["n"] for f in ring.last(10, FlowFilter())] == [1, 3]
    with pytest.raises(TypeError):
        ring.add({"n": 0})


def test_followers_get_every_record_of_a_batch() -> None:
    async def follow() -> tuple[list[int], list[int]]:
        loop = asyncio.get_running_loop()
        ring = RecordRing(4)
        flows = Subscriber(loop, FlowFilter())
        entries = EntrySubscriber(loop)
        ring.subscribe(flows)
        ring.subscribe_entries(entries)
        ring.add_records([str(n).encode() for n in range(6)], _Context("a"))  # more than the ring holds
        got = [e.seq for e in await entries.batch()]
        await asyncio.sleep(0)
        offered = []
        while not flows.queue.empty():
            offered.append(flows.queue.get_nowait()["n"])
        ring.unsubscribe(flows)
        ring.unsubscribe_entries(entries)
        ring.add_records([b"9"], _Context("a"))
        assert flows.queue.empty()
        return got, offered

    got, offered = asyncio.run(follow())
    assert got == [1, 2, 3, 4, 5, 6]
    assert offered == [0, 1, 2, 3, 4, 5]
