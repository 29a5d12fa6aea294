"""The relay's k-way merge: several nodes' GetFlows streams into one, in time order.

Each node's stream is taken in its own order (a node sends its flows oldest first); the merge
repeatedly emits the oldest head among the nodes' buffers. It may emit only once every node
still streaming has a head buffered (else a quiet node could still send something older), which
makes the merge exact. A follower's streams never end and some are quiet: a node that has sent
nothing for `window` seconds no longer holds the others back (until it sends again), so a quiet
node delays the others by at most the window, never blocks them; a node that streams, however
slowly, is waited for. "Quiet" is confirmed before it lets the others go: the merge first gives
the event loop a moment (CONFIRM_QUIET_S) to read what is already due, because after the relay
itself stalled (descheduled on a busy machine) past the window a streaming node's next item is
waiting in its socket or timer, not yet read, and would otherwise come out of order. A node
whose stream fails is reported (an `Ended` with the error) and dropped from the merge; the
others go on. Streams can be added while merging (a follower picks up nodes that (re)connect).
Pure asyncio, no gRPC: unit-tested alone."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_WINDOW_S = 0.5
DEFAULT_MAX_BUFFERED = 10_000  # past this many buffered items the oldest head goes out regardless
QUEUE_SIZE = 1000  # items read but not yet merged: a consumer that stops reading stops the readers
CONFIRM_QUIET_S = 0.002  # a node newly past the window: this long for what is already due to be read


@dataclass(frozen=True)
class Item(Generic[T]):
    node: str
    value: T


@dataclass(frozen=True)
class Ended:
    """A node's stream ended: cleanly (error None) or with an error (it leaves the merge)."""

    node: str
    error: BaseException | None = None


_END = object()


class Merger(Generic[T]):
    """Merge of node streams by `key` (nanoseconds). Iterate it once; `add` streams any time.

    Without `follow` the iteration ends when every stream added so far has ended; with it, it
    goes on (waiting for streams to be added) until the consumer stops iterating."""

    def __init__(self, key: Callable[[T], int], *, follow: bool, window: float = DEFAULT_WINDOW_S,
                 max_buffered: int = DEFAULT_MAX_BUFFERED, clock: Callable[[], float] = time.monotonic) -> None:
        self._key = key
        self._follow = follow
        self._window = window
        self._max = max_buffered
        self._clock = clock
        # Bounded, so a client that reads slowly holds the nodes' streams back (gRPC flow control; a
        # node then reports what its follower queue lost) instead of the relay buffering without end.
        self._queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue(QUEUE_SIZE)
        self._buffers: dict[str, deque[tuple[int, float, T]]] = {}
        self._active: set[str] = set()
        self._last_seen: dict[str, float] = {}  # when each node last sent something (or was added)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._buffered = 0
        self._confirmed_quiet: set[str] = set()  # past the window, and nothing came in the confirmation wait

    @property
    def active(self) -> frozenset[str]:
        """Nodes whose stream is still being read."""
        return frozenset(self._active)

    def add(self, node: str, stream: AsyncIterator[T]) -> None:
        if node in self._active:
            raise ValueError(f"node {node} is already being merged")
        self._active.add(node)
        self._buffers.setdefault(node, deque())
        self._last_seen[node] = self._clock()
        self._tasks[node] = asyncio.get_running_loop().create_task(self._read(node, stream), name=f"merge-{node}")

    async def _read(self, node: str, stream: AsyncIterator[T]) -> None:
        try:
            async for value in stream:
                await self._queue.put((node, value))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # reported as the node's end; the merge goes on
            await self._queue.put((node, Ended(node, exc)))
            return
        await self._queue.put((node, Ended(node)))

    def _take(self, node: str, value: object) -> Ended | None:
        if isinstance(value, Ended):
            self._active.discard(node)
            self._tasks.pop(node, None)
            self._last_seen.pop(node, None)
            self._confirmed_quiet.discard(node)
            return value
        now = self._clock()
        self._last_seen[node] = now
        self._confirmed_quiet.discard(node)
        self._buffers[node].append((self._key(value), now, value))  # type: ignore[arg-type]
        self._buffered += 1
        return None

    def _ready(self) -> Item[T] | None:
        """The oldest head, if it may go out now."""
        heads = [(buffer[0][0], node) for node, buffer in self._buffers.items() if buffer]
        if not heads:
            return None
        _, node = min(heads)
        if self._held_back() and self._buffered < self._max:
            return None
        _, _, value = self._buffers[node][0]
        self._buffers[node].popleft()
        self._buffered -= 1
        return Item(node, value)

    def _waiting_for(self) -> list[str]:
        """Active nodes with nothing buffered that sent something within the window."""
        now = self._clock()
        return [n for n in self._active if not self._buffers[n] and now - self._last_seen[n] < self._window]

    def _held_back(self) -> bool:
        return bool(self._waiting_for())

    def _unconfirmed_quiet(self) -> list[str]:
        """Active nodes with nothing buffered, past the window, not yet confirmed quiet."""
        now = self._clock()
        return [n for n in self._active if not self._buffers[n] and n not in self._confirmed_quiet
                and now - self._last_seen[n] >= self._window]

    def _wait_time(self) -> float | None:
        """How long until the nodes holding the merge back have been quiet for the window (None:
        nothing is buffered, so nothing to wait for but new items)."""
        if self._buffered == 0:
            return None
        waiting = self._waiting_for()
        if not waiting:
            return 0.0
        return max(0.0, min(self._last_seen[n] for n in waiting) + self._window - self._clock())

    async def __aiter__(self) -> AsyncIterator[Item[T] | Ended]:
        try:
            while True:
                if self._buffered and (quiet := self._unconfirmed_quiet()) and not self._held_back():
                    # about to let the others pass these nodes: first read what is already due
                    # (Ended or items), then judge again
                    ended = await self._take_for(CONFIRM_QUIET_S)
                    if ended is not None:  # the wait was cut short: judge again after it
                        yield ended
                        continue
                    self._confirmed_quiet.update(n for n in quiet if n in self._active and not self._buffers[n])
                    continue
                # what the readers queued meanwhile is taken first (a node confirmed quiet may have sent)
                while self._queue.empty() and (item := self._ready()) is not None:
                    yield item
                if not self._active and not self._follow and self._buffered == 0 and self._queue.empty():
                    return
                if self._queue.empty():  # only then wait (wait_for costs a task per call)
                    try:
                        node, value = await asyncio.wait_for(self._queue.get(), self._wait_time())
                    except TimeoutError:
                        continue
                else:
                    node, value = self._queue.get_nowait()
                ended = self._take_queued(node, value)
                if ended is not None:
                    yield ended
        finally:
            await self.close()

    async def _take_for(self, seconds: float) -> Ended | None:
        """Take what the readers queue within `seconds` (stopping at a stream's end)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            try:
                node, value = await asyncio.wait_for(self._queue.get(), left)
            except TimeoutError:
                return None
            ended = self._take_queued(node, value)
            if ended is not None:
                return ended
        return None

    def _take_queued(self, node: str, value: object) -> Ended | None:
        """Take this item and everything already queued after it (a burst, a node's history, is one
        merge step), stopping at a stream's end."""
        ended = self._take(node, value)
        while ended is None and not self._queue.empty():
            node, value = self._queue.get_nowait()
            ended = self._take(node, value)
        return ended

    async def close(self) -> None:
        """Stop reading every stream (the consumer went away)."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
