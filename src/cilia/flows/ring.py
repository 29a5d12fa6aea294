"""A bounded ring of recent flows with sequence numbers, and subscribers for --follow.

Entries may be lazy: a maker the ring calls the first time the entry is read, or at once when
someone follows; its result is kept. A maker returning None (an undecodable record) is skipped.
The event pump adds raw datapath records in batches (`add_records`): each entry keeps its record
and the context it arrived in (the endpoint views then current), so the flow dict is built only
for a reader that wants one, and a Hubble client can be served the record encoded straight to
wire format (`RecordEntry.encode`, cilia.hubble.wire) without any dict at all. Such an entry's
uuid is the ring's random prefix and its sequence number: unique, and known before it is built."""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol, cast

from cilia.flows.build import Flow
from cilia.flows.filter import FlowFilter
from cilia.flows.shape import Shape


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
        self.push_many((entry,))

    def push_many(self, entries: Iterable[FlowEntry]) -> None:
        """Called from the event reader thread: one lock and at most one wakeup for a batch."""
        with self._lock:
            room = self.size - len(self._pending)
            batch = list(entries)
            if len(batch) > room:
                self.lost += len(batch) - max(room, 0)
                batch = batch[:max(room, 0)]
            if not batch:
                return
            self._pending.extend(batch)
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


class RecordContext(Protocol):
    """What record entries of one batch share: how to build them (and, optionally, encode them)."""

    def build(self, record: bytes, flow_id: str) -> Flow | None: ...

    def encode(self, record: bytes, flow_id: str) -> bytes | None:
        """Wire bytes of the record's flow, or None when the context has no fast path for it."""
        ...

    # Optional (looked up with getattr): `shape_key(record) -> bytes | None` and
    # `shape(record) -> Shape | None` (cilia.flows.shape), for consumers that derive from shapes;
    # `encode_many(records, flow_ids) -> list[bytes | None]`, encode for a batch (encode_entries).


class _Entry:
    __slots__ = ("_make", "_value", "seq", "wire")

    def __init__(self, make: Callable[[], Flow | None] | None, value: Flow | None = None) -> None:
        self._make = make
        self._value = value
        self.seq = 0
        self.wire: bytes | None = None  # a reader's cache of the flow's encoding (the Hubble server's)

    def get(self) -> Flow | None:
        make = self._make
        if make is not None:
            value = self._produce(make)
            # Two readers (the API, the Hubble server, the metrics step) may build the same entry
            # at once; the first to publish wins, so every reader sees one flow (one uuid).
            with _PUBLISH:
                if self._make is not None:
                    self._value = value
                    self._make = None
        return self._value

    def _produce(self, make: Callable[[], Flow | None]) -> Flow | None:
        return make()

    @property
    def flow_id(self) -> str | None:
        """The uuid the flow has or will have (None: not known before it is built)."""
        return self._value.get("uuid") if self._value is not None else None

    def encode(self) -> bytes | None:
        """The flow's wire bytes by a fast path, if the entry has one (record entries)."""
        return None

    def shape_key(self) -> tuple[RecordContext, bytes] | None:
        """The record's shape key (cilia.flows.shape) with the context it came in (whose endpoint
        views the shape's lookups use), if the entry has a record and its context knows shapes."""
        return None

    def shape(self) -> Shape | None:
        """The record's shape with its lookups made now (cilia.flows.shape), or None."""
        return None


def _UNBUILT() -> Flow | None:
    raise AssertionError("a record entry is built by its context")


class RecordEntry(_Entry):
    """A raw datapath record and the context it arrived in; built (or encoded) on demand."""

    __slots__ = ("_prefix", "context", "record")

    def __init__(self, record: bytes, context: RecordContext, seq: int, prefix: str) -> None:
        # _Entry's fields set here, not by a super().__init__ call: one is made per datapath event
        self._make = _UNBUILT
        self._value = None
        self.wire = None
        self.record = record
        self.context = context
        self.seq = seq
        self._prefix = prefix

    def _produce(self, make: Callable[[], Flow | None]) -> Flow | None:
        return self.context.build(self.record, self.flow_id)

    @property
    def flow_id(self) -> str:
        return f"{self._prefix}{self.seq:012x}"

    def encode(self) -> bytes | None:
        return self.context.encode(self.record, self.flow_id)

    def shape_key(self) -> tuple[RecordContext, bytes] | None:
        key_of = getattr(self.context, "shape_key", None)  # optional in a RecordContext
        key = key_of(self.record) if key_of is not None else None
        return (self.context, key) if key is not None else None

    def shape(self) -> Shape | None:
        shape_of = getattr(self.context, "shape", None)
        return shape_of(self.record) if shape_of is not None else None


def encode_entries(entries: list[_Entry]) -> list[bytes | None]:
    """Each entry's `encode()`, a context's record entries at once where the context can
    (`encode_many(records, flow_ids)`, optional in a RecordContext); None where there is no fast
    path, and for entries of other kinds (the caller's slow path decides)."""
    out: list[bytes | None] = [None] * len(entries)
    runs: dict[RecordContext, list[int]] = {}
    for index, entry in enumerate(entries):
        if type(entry) is RecordEntry:
            run = runs.get(entry.context)
            if run is None:
                run = runs[entry.context] = []
            run.append(index)
    for context, indices in runs.items():
        many = getattr(context, "encode_many", None)
        if many is None:
            for index in indices:
                out[index] = entries[index].encode()
            continue
        records = [cast(RecordEntry, entries[index]).record for index in indices]
        flow_ids = [cast(RecordEntry, entries[index]).flow_id for index in indices]
        for index, data in zip(indices, many(records, flow_ids), strict=True):
            out[index] = data
    return out


_PUBLISH = threading.Lock()
FlowEntry = _Entry  # what EntrySubscriber hands out: call .get() for the flow (None: undecodable)


class FlowRing:
    def __init__(self, capacity: int = 4096) -> None:
        self._flows: deque[_Entry] = deque(maxlen=capacity)
        self._prefix = str(uuid.uuid4())[:24]  # record entries' uuids: this and the sequence number
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
            entry.seq = self._seq
            self._flows.append(entry)
            subscribers = list(self._subscribers)
            entry_subscribers = list(self._entry_subscribers)
        for follower in entry_subscribers:
            follower.push(entry)
        if subscribers:
            self._offer(subscribers, (entry,))

    def add_records(self, records: list[bytes], context: RecordContext) -> None:
        """A batch of raw records (the event pump's), under one lock; built only when read."""
        with self._lock:
            seq, prefix = self._seq, self._prefix
            entries = [RecordEntry(record, context, seq + n, prefix) for n, record in enumerate(records, 1)]
            self._seq = seq + len(entries)
            self.seen += len(entries)
            self._flows.extend(entries)
            subscribers = list(self._subscribers) if self._subscribers else None
            entry_subscribers = list(self._entry_subscribers) if self._entry_subscribers else None
        if entry_subscribers:
            for follower in entry_subscribers:
                follower.push_many(entries)
        if subscribers:
            self._offer(subscribers, entries)

    @staticmethod
    def _offer(subscribers: list[Subscriber], entries: Iterable[_Entry]) -> None:
        for entry in entries:
            flow = entry.get()
            if flow is None:
                continue
            for subscriber in subscribers:
                if subscriber.filter.matches(flow):
                    subscriber.loop.call_soon_threadsafe(subscriber.offer, flow)

    def last(self, count: int, flow_filter: FlowFilter) -> list[Flow]:
        flows = (entry.get() for entry in self.entries())
        matched = [flow for flow in flows if flow is not None and flow_filter.matches(flow)]
        return matched[-count:] if count > 0 else []

    def since(self, cursor: int) -> tuple[int, list[_Entry], int]:
        """Entries added after sequence number `cursor`: (the new cursor, the entries oldest
        first, how many were overwritten before this call could read them)."""
        with self._lock:
            newest = self._seq
            wanted = newest - cursor
            held = min(wanted, len(self._flows))
            entries = list(itertools.islice(reversed(self._flows), held))
        entries.reverse()
        return newest, entries, wanted - held

    def entries(self) -> list[_Entry]:
        """Every buffered entry, oldest first."""
        with self._lock:
            return list(self._flows)

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


class RecordRing(FlowRing):
    """A FlowRing for raw records that nobody may ever read (the event pump's decoded-event ring
    for `cilia monitor`): it keeps the records and their contexts as they came, in two deques,
    and makes entries only when read or followed. An entry object per record, made and dropped
    ~50,000 times a second, is most of what such a ring would cost: the allocation and the
    cyclic garbage collector scanning each one while it lives (bytes and the shared context
    are not scanned). Entries are made afresh on each read: nothing is cached on them."""

    def __init__(self, capacity: int = 4096) -> None:
        super().__init__(capacity)
        self._records: deque[bytes] = deque(maxlen=capacity)
        self._contexts: deque[RecordContext] = deque(maxlen=capacity)

    def _add(self, entry: _Entry) -> None:
        raise TypeError("a RecordRing takes raw records (add_records)")

    def add_records(self, records: list[bytes], context: RecordContext) -> None:
        with self._lock:
            first = self._seq + 1
            self._seq += len(records)
            self.seen += len(records)
            self._records.extend(records)
            self._contexts.extend(itertools.repeat(context, len(records)))
            followed = bool(self._subscribers or self._entry_subscribers)
        if followed:  # made now only for followers
            entries: list[_Entry] = [RecordEntry(record, context, seq, self._prefix)
                                     for seq, record in enumerate(records, first)]
            with self._lock:
                subscribers = list(self._subscribers)
                entry_subscribers = list(self._entry_subscribers)
            for follower in entry_subscribers:
                follower.push_many(entries)
            if subscribers:
                self._offer(subscribers, entries)

    def _made(self, newest: int, records: list[bytes], contexts: list[RecordContext]) -> list[_Entry]:
        first = newest - len(records) + 1
        return [RecordEntry(record, context, seq, self._prefix)
                for seq, record, context in zip(itertools.count(first), records, contexts)]

    def since(self, cursor: int) -> tuple[int, list[_Entry], int]:
        with self._lock:
            newest = self._seq
            wanted = newest - cursor
            held = min(wanted, len(self._records))
            records = list(itertools.islice(self._records, len(self._records) - held, None))
            contexts = list(itertools.islice(self._contexts, len(self._contexts) - held, None))
        return newest, self._made(newest, records, contexts), wanted - held

    def entries(self) -> list[_Entry]:
        with self._lock:
            newest, records, contexts = self._seq, list(self._records), list(self._contexts)
        return self._made(newest, records, contexts)

    def __len__(self) -> int:
        return len(self._records)
