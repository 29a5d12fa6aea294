"""The relay's k-way merge (cilia.relay.merge) on plain async streams: history merged exactly in
time order, a follower not held up by a quiet node for longer than the window, a node lost
mid-stream reported while the others go on, streams added while following."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from cilia.relay.merge import Ended, Item, Merger


async def stream(values: list[int], *, fail_after: int | None = None, gap: float = 0.0,
                 then_wait: asyncio.Event | None = None) -> AsyncIterator[int]:
    for i, value in enumerate(values):
        if fail_after is not None and i == fail_after:
            raise ConnectionError("node went away")
        if gap:
            await asyncio.sleep(gap)
        yield value
    if then_wait is not None:
        await then_wait.wait()


def run(coro: object) -> object:
    return asyncio.run(asyncio.wait_for(coro, 10))  # type: ignore[arg-type]


async def collect(merger: Merger[int], limit: int | None = None) -> list[Item[int] | Ended]:
    out: list[Item[int] | Ended] = []
    async for event in merger:
        out.append(event)
        if limit is not None and sum(isinstance(e, Item) for e in out) >= limit:
            break
    return out


def values(events: list[Item[int] | Ended]) -> list[int]:
    return [e.value for e in events if isinstance(e, Item)]


def test_history_is_merged_exactly_in_time_order() -> None:
    rng = random.Random(7)
    nodes = {f"n{i}": sorted(rng.sample(range(10_000), 200)) for i in range(4)}

    async def main() -> list[Item[int] | Ended]:
        merger: Merger[int] = Merger(lambda v: v, follow=False, window=0.05)
        for name, vs in nodes.items():
            # uneven pacing: one node is slow, so the window alone would not order them
            merger.add(name, stream(vs, gap=0.0005 if name == "n0" else 0.0))
        return await collect(merger)

    events = run(main())
    assert isinstance(events, list)
    got = values(events)
    assert got == sorted(v for vs in nodes.values() for v in vs)
    assert sorted(e.node for e in events if isinstance(e, Ended)) == sorted(nodes)
    assert all(e.error is None for e in events if isinstance(e, Ended))
    # each item keeps its node
    assert all(e.value in nodes[e.node] for e in events if isinstance(e, Item))


def test_no_streams_ends_at_once() -> None:
    async def main() -> list[Item[int] | Ended]:
        return await collect(Merger(lambda v: v, follow=False))

    assert run(main()) == []


def test_a_quiet_node_delays_a_follower_by_at_most_the_window() -> None:
    async def main() -> tuple[list[int], float]:
        quiet = asyncio.Event()
        merger: Merger[int] = Merger(lambda v: v, follow=True, window=0.2)
        merger.add("busy", stream([1, 2, 3], then_wait=quiet))
        merger.add("quiet", stream([], then_wait=quiet))
        loop = asyncio.get_running_loop()
        start = loop.time()
        events = await collect(merger, limit=3)
        quiet.set()
        return values(events), loop.time() - start

    got, took = run(main())  # type: ignore[misc]
    assert got == [1, 2, 3]
    assert 0.15 <= took < 2.0  # held for the window (the quiet node might have had older flows), not forever


def test_a_follower_merges_live_flows_in_order() -> None:
    async def main() -> list[int]:
        done = asyncio.Event()
        merger: Merger[int] = Merger(lambda v: v, follow=True, window=0.3)
        merger.add("a", stream([10, 30, 50], gap=0.02, then_wait=done))
        merger.add("b", stream([20, 40, 60], gap=0.02, then_wait=done))
        got = values(await collect(merger, limit=6))
        done.set()
        return got

    assert run(main()) == [10, 20, 30, 40, 50, 60]


def test_node_lost_mid_stream_is_reported_and_the_others_go_on() -> None:
    async def main() -> list[Item[int] | Ended]:
        merger: Merger[int] = Merger(lambda v: v, follow=False, window=0.05)
        merger.add("ok", stream([1, 3, 5, 7, 9]))
        merger.add("lost", stream([2, 4, 6, 8], fail_after=2))
        return await collect(merger)

    events = run(main())
    assert isinstance(events, list)
    assert values(events) == [1, 2, 3, 4, 5, 7, 9]
    lost = [e for e in events if isinstance(e, Ended) and e.node == "lost"]
    assert len(lost) == 1 and isinstance(lost[0].error, ConnectionError)
    ok = [e for e in events if isinstance(e, Ended) and e.node == "ok"]
    assert ok and ok[0].error is None


def test_node_lost_while_following_does_not_stop_the_follower() -> None:
    async def main() -> list[Item[int] | Ended]:
        keep = asyncio.Event()
        merger: Merger[int] = Merger(lambda v: v, follow=True, window=0.5)
        merger.add("ok", stream([1, 3, 5], gap=0.05, then_wait=keep))
        merger.add("lost", stream([2, 4], fail_after=1))
        events = await collect(merger, limit=4)
        keep.set()
        return events

    events = run(main())
    assert isinstance(events, list)
    assert values(events) == [1, 2, 3, 5]
    assert [e.node for e in events if isinstance(e, Ended)] == ["lost"]


def test_streams_added_while_following() -> None:
    async def main() -> list[Item[int] | Ended]:
        keep = asyncio.Event()
        merger: Merger[int] = Merger(lambda v: v, follow=True, window=0.05)
        merger.add("first", stream([1], then_wait=keep))
        out: list[Item[int] | Ended] = []
        async for event in merger:
            out.append(event)
            if isinstance(event, Item) and event.value == 1:
                assert merger.active == {"first"}
                merger.add("late", stream([5, 6], then_wait=keep))
                with pytest.raises(ValueError):
                    merger.add("late", stream([]))
            if len(values(out)) == 3:
                break
        keep.set()
        return out

    events = run(main())
    assert isinstance(events, list)
    assert values(events) == [1, 5, 6]
    assert {e.node for e in events if isinstance(e, Item)} == {"first", "late"}


def test_a_full_buffer_lets_the_oldest_out_without_waiting() -> None:
    async def main() -> tuple[list[int], float]:
        keep = asyncio.Event()
        merger: Merger[int] = Merger(lambda v: v, follow=True, window=30.0, max_buffered=3)
        merger.add("busy", stream(list(range(10)), then_wait=keep))
        merger.add("quiet", stream([], then_wait=keep))
        loop = asyncio.get_running_loop()
        start = loop.time()
        got = values(await collect(merger, limit=7))
        keep.set()
        return got, loop.time() - start

    got, took = run(main())  # type: ignore[misc]
    assert got == list(range(7)) and took < 5


def test_stopping_the_consumer_stops_the_readers() -> None:
    async def main() -> bool:
        forever = asyncio.Event()
        cancelled = asyncio.Event()

        async def endless() -> AsyncIterator[int]:
            try:
                yield 1
                await forever.wait()
            finally:
                cancelled.set()

        merger: Merger[int] = Merger(lambda v: v, follow=True, window=0.01)
        merger.add("n", endless())
        async for _ in merger:
            break
        await asyncio.wait_for(cancelled.wait(), 2)
        return cancelled.is_set()

    assert run(main()) is True


def test_a_consumer_that_stops_reading_holds_the_readers_back() -> None:
    from cilia.relay import merge

    async def main() -> int:
        produced = 0

        async def endless() -> AsyncIterator[int]:
            nonlocal produced
            for i in range(10**6):
                produced += 1
                yield i

        merger: Merger[int] = Merger(lambda v: v, follow=True, window=0.01, max_buffered=100)
        merger.add("fast", endless())
        events = merger.__aiter__()
        await events.__anext__()  # one item read, then the consumer pauses
        await asyncio.sleep(0.3)
        held = produced
        await events.aclose()
        return held

    held = run(main())
    # the queue, plus at most one drained batch of it in the buffers: bounded, not a million
    assert isinstance(held, int) and held <= 2 * merge.QUEUE_SIZE + 100 + 10


def test_a_stall_of_the_whole_relay_longer_than_the_window_does_not_reorder_history() -> None:
    """The relay process descheduled (a busy machine) past the window: when it runs again a slow
    node's next item is due but not yet read; the node must not count as quiet for that."""
    import time

    async def stalling(values: list[int]) -> AsyncIterator[int]:
        for i, value in enumerate(values):
            if i == len(values) // 2:
                time.sleep(0.12)  # blocks the loop: every stream stalls at once
            yield value

    rng = random.Random(11)
    nodes = {f"n{i}": sorted(rng.sample(range(10_000), 100)) for i in range(3)}

    async def main() -> list[Item[int] | Ended]:
        merger: Merger[int] = Merger(lambda v: v, follow=False, window=0.05)
        merger.add("n0", stream(nodes["n0"], gap=0.001))
        merger.add("n1", stalling(nodes["n1"]))
        merger.add("n2", stream(nodes["n2"]))
        return await collect(merger)

    events = run(main())
    assert isinstance(events, list)
    assert values(events) == sorted(v for vs in nodes.values() for v in vs)
