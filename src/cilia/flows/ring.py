"""A bounded ring of recent flows with sequence numbers, and subscribers for --follow."""

from __future__ import annotations

import asyncio
import threading
from collections import deque

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


class FlowRing:
    def __init__(self, capacity: int = 4096) -> None:
        self._flows: deque[tuple[int, Flow]] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._seq = 0
        self._subscribers: set[Subscriber] = set()
        self.seen = 0
        self.events_lost = 0

    def add(self, flow: Flow) -> None:
        """Called from the event reader thread."""
        with self._lock:
            self._seq += 1
            self.seen += 1
            self._flows.append((self._seq, flow))
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            if subscriber.filter.matches(flow):
                subscriber.loop.call_soon_threadsafe(subscriber.offer, flow)

    def last(self, count: int, flow_filter: FlowFilter) -> list[Flow]:
        with self._lock:
            flows = [flow for _, flow in self._flows]
        matched = [flow for flow in flows if flow_filter.matches(flow)]
        return matched[-count:] if count > 0 else []

    def __len__(self) -> int:
        return len(self._flows)

    def subscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.add(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(subscriber)
