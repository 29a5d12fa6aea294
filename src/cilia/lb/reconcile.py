"""From one set of LB map entries to another: the diff, and the order it is written in.

The datapath reads the maps while they change, so writes are ordered to never expose a dangling
id: backends, rev-NAT entries and Maglev tables before the slots that name them, slots before
their service entry (whose count makes them reachable); removals the other way round. The order
is computed here on typed entries; whoever writes the maps (cilia.maps.lb) executes it as given.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from cilia.lb.entries import (
    BackendEntry,
    LbEntries,
    LbTable,
    MaglevEntry,
    RevNatEntry,
    SlotKey,
    SlotValue,
)

WRITE_ORDER = (LbTable.BACKENDS, LbTable.REVNAT, LbTable.MAGLEV, LbTable.SERVICES)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
EntryKey = SlotKey | int
EntryValue = SlotValue | BackendEntry | RevNatEntry | MaglevEntry


class LbMapError(Exception):
    """Writing the LB maps failed part-way (e.g. a full map): they hold part of the change."""


@dataclass
class LbKeys:
    """Keys to remove, per map."""

    services: list[SlotKey] = field(default_factory=list)
    backends: list[int] = field(default_factory=list)
    revnat: list[int] = field(default_factory=list)
    maglev: list[int] = field(default_factory=list)


@dataclass
class LbChanges:
    upserts: LbEntries = field(default_factory=LbEntries)
    deletes: LbKeys = field(default_factory=LbKeys)


@dataclass(frozen=True)
class Put:
    table: LbTable
    key: EntryKey
    value: EntryValue


@dataclass(frozen=True)
class Remove:
    table: LbTable
    key: EntryKey


Operation = Put | Remove


def _changed(before: dict[K, V], after: dict[K, V]) -> dict[K, V]:
    return {k: v for k, v in after.items() if before.get(k) != v}


def _gone(before: dict[K, V], after: dict[K, V]) -> list[K]:
    return [k for k in before if k not in after]


def diff(before: LbEntries, after: LbEntries) -> LbChanges:
    """What turns `before` into `after`: entries new or different in `after`, keys only in `before`."""
    return LbChanges(
        LbEntries(_changed(before.services, after.services), _changed(before.backends, after.backends),
                  _changed(before.revnat, after.revnat), _changed(before.maglev, after.maglev)),
        LbKeys(_gone(before.services, after.services), _gone(before.backends, after.backends),
               _gone(before.revnat, after.revnat), _gone(before.maglev, after.maglev)))


def _upserts(entries: LbEntries, table: LbTable) -> list[tuple[EntryKey, EntryValue]]:
    if table is LbTable.SERVICES:
        services: list[tuple[SlotKey, SlotValue]] = list(entries.services.items())
        # slots before the service entries that count them (stable: otherwise in the given order)
        services.sort(key=lambda kv: kv[0].slot == 0)
        return list(services)
    if table is LbTable.BACKENDS:
        return list(entries.backends.items())
    if table is LbTable.REVNAT:
        return list(entries.revnat.items())
    return list(entries.maglev.items())


def _deletes(keys: LbKeys, table: LbTable) -> Sequence[EntryKey]:
    if table is LbTable.SERVICES:
        return sorted(keys.services, key=lambda k: k.slot != 0)  # service entries first: no slot is then reachable
    return {LbTable.BACKENDS: keys.backends, LbTable.REVNAT: keys.revnat, LbTable.MAGLEV: keys.maglev}[table]


def plan(changes: LbChanges) -> list[Operation]:
    """The changes as map operations, in the order that never exposes a dangling id."""
    operations: list[Operation] = []
    for table in WRITE_ORDER:
        operations += [Put(table, key, value) for key, value in _upserts(changes.upserts, table)]
    for table in reversed(WRITE_ORDER):
        operations += [Remove(table, key) for key in _deletes(changes.deletes, table)]
    return operations
