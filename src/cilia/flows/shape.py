"""A record's shape, for flow consumers that derive a little from every flow (Hubble metrics'
label values, the namespaces flows name) and would otherwise build each flow's dict for it.

Two records of one shape build flows that differ only in their time, uuid, lengths, ports and
TCP sequence numbers (cilia.hubble.wire.WireEncoder caches their wire encoding by the same
shape, and tests/unit/test_hubble_wire.py holds it to the slow path). The shape has two parts:

- its key (`shape_key`): bytes of the record, no lookup made, cheap enough to take for every
  record of a flood and group a pass's records by;
- its lookups (`Shape`: the key, then the endpoint views of both sides and what else the flow
  is made of: identity labels of a side with no endpoint here, DNS names, the policy rule), made
  once per group, when the pass reads it, as the slow path would build the flow then.

A consumer keeps what it derives from a flow in a `ShapeCache` by key, valid while the lookups
are the same (the views the same objects, the rest equal), and builds one flow of the shape (the
slow path, the reference) to derive it when they are not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from cilia.flows.build import EndpointView, Flow

# (key, source view, destination view, the other lookups or None when there are none)
Shape = tuple[bytes, EndpointView | None, EndpointView | None, tuple[Any, ...] | None]
T = TypeVar("T")
DEFAULT_SIZE = 8192  # shapes kept per cache (cleared when full: one flow built per shape again)


class Buildable(Protocol):
    def get(self) -> Flow | None: ...


class ShapeCache(Generic[T]):
    """What `derive` makes of a flow, by the flow's shape (one consumer's, used by one thread)."""

    def __init__(self, derive: Callable[[Flow], T], size: int = DEFAULT_SIZE) -> None:
        self._derive = derive
        self._size = size
        self._items: dict[bytes, tuple[Shape, T]] = {}
        self.built = 0  # flows built to derive from (a shape met first, or with changed lookups)

    def get(self, shape: Shape, entry: Buildable) -> T | None:
        """`derive` of the entry's flow; None when the entry does not build (undecodable)."""
        cached = self._items.get(shape[0])
        if cached is not None:
            old = cached[0]
            if old[1] is shape[1] and old[2] is shape[2] and old[3] == shape[3]:
                return cached[1]
        flow = entry.get()
        if flow is None:
            return None
        self.built += 1
        value = self._derive(flow)
        if len(self._items) >= self._size:
            self._items.clear()
        self._items[shape[0]] = (shape, value)
        return value
