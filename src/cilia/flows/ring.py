"""A bounded ring of recent flows with sequence numbers, and subscribers for --follow.

Entries may be lazy: a maker the ring calls the first time the entry is read, or at once when
someone follows; its result is kept. A maker returning None (an undecodable record) is skipped."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import deque
from collections.abc import Callable

from cilia.flows.build import Flow
from cilia.flows.filter import FlowFilter


class Subscriber:
    """A bounded queue: a slow reader loses flows (counted) instead of blocking the datapath reader."""

    def __init__(self, loop: asyncio.AbstractEventLoop, flow_filter: FlowFilter, size: int = 1024) -> None:
        self.loop = loop
        self.filter = flow_filter
        self.queue: asyncio.Queue[Flow] = asyncio.Queue(maxsize=size)
        self.lost = 0

    def offer(self, flow: Flow) -> None:
        try:
            self.queue.put_nowait(flow)
        except asyncio.QueueFull:
            self.lost += 1


class EntrySubscriber:
    """A follower that takes entries unbuilt and builds them on its own thread (the Hubble
    server's): the event pump only appends to a bounded list, and wakes the follower's loop
    once per batch, not per flow. When the list is full, entries are counted lost, unbuilt, so
    a slow client costs the pump nothing."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int = 4096) -> None:
        self.loop = loop
        self.size = size
        self.lost = 0
        self._pending: deque[FlowEntry] = deque()
        self._scheduled = False
        self._lock = threading.Lock()
        self._wake = asyncio.Event()

    def push(self, entry: FlowEntry) -> None:
        """Called from the event reader thread."""
        with self._lock:
            if len(self._pending) >= self.size:
                self.lost += 1
                return
            self._pending.append(entry)
            if self._scheduled:
                return
            self._scheduled = True
        self.loop.call_soon_threadsafe(self._wake.set)

    async def batch(self) -> list[FlowEntry]:
        """The entries pushed since the last call (waits for at least one)."""
        while True:
            with self._lock:
                self._scheduled = False
                if self._pending:
                    entries = list(self._pending)
                    self._pending.clear()
                    return entries
            self._wake.clear()
            await self._wake.wait()


class _Entry:
    __slots__ = ("_make", "_value")

    def __init__(self, make: Callable[[], Flow | None] | None, value: Flow | None = None) -> None:
        self._make = make
        self._value = value

    def get(self) -> Flow | None:
        make = self._make
        if make is not None:
            value = make()
            # Two readers (the API, the Hubble server, the metrics step) may build the same entry
            # at once; the first to publish wins, so every reader sees one flow (one uuid).
            with _PUBLISH:
                if self._make is not None:
                    self._value = value
                    self._make = None
        return self._value


_PUBLISH = threading.Lock()
FlowEntry = _Entry  # what EntrySubscriber hands out: call .get() for the flow (None: undecodable)


class FlowRing:
    def __init__(self, capacity: int = 4096) -> None:
        self._flows: deque[tuple[int, _Entry]] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._seq = 0
        self._subscribers: set[Subscriber] = set()
        self._entry_subscribers: set[EntrySubscriber] = set()
        self.seen = 0
        self.events_lost = 0

    def add(self, flow: Flow) -> None:
        """Called from the event reader thread."""
        self._add(_Entry(None, flow))

    def add_lazy(self, make: Callable[[], Flow | None]) -> None:
        """Keep a flow to be made when first read; made now only if someone follows."""
        self._add(_Entry(make))

    def _add(self, entry: _Entry) -> None:
        with self._lock:
            self._seq += 1
            self.seen += 1
            self._flows.append((self._seq, entry))
            subscribers = list(self._subscribers)
            entry_subscribers = list(self._entry_subscribers)
        for follower in entry_subscribers:
            follower.push(entry)
        if not subscribers:
            return
        flow = entry.get()
        if flow is None:
            return
        for subscriber in subscribers:
            if subscriber.filter.matches(flow):
                subscriber.loop.call_soon_threadsafe(subscriber.offer, flow)

    def last(self, count: int, flow_filter: FlowFilter) -> list[Flow]:
        with self._lock:
            entries = [entry for _, entry in self._flows]
        flows = (entry.get() for entry in entries)
        matched = [flow for flow in flows if flow is not None and flow_filter.matches(flow)]
        return matched[-count:] if count > 0 else []

    def since(self, cursor: int) -> tuple[int, list[_Entry], int]:
        """Entries added after sequence number `cursor`: (the new cursor, the entries oldest
        first, how many were overwritten before this call could read them)."""
        with self._lock:
            newest = self._seq
            wanted = newest - cursor
            held = min(wanted, len(self._flows))
            entries = [entry for _, entry in itertools.islice(reversed(self._flows), held)]
        entries.reverse()
        return newest, entries, wanted - held

    @property
    def sequence(self) -> int:
        """The sequence number of the newest entry (0: none yet)."""
        return self._seq

    def __len__(self) -> int:
        return len(self._flows)

    def subscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.add(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(subscriber)

    def subscribe_entries(self, subscriber: EntrySubscriber) -> None:
        with self._lock:
            self._entry_subscribers.add(subscriber)

    def unsubscribe_entries(self, subscriber: EntrySubscriber) -> None:
        with self._lock:
            self._entry_subscribers.discard(subscriber)
