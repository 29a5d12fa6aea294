"""Desired LB map entries of one service: its frontends, with their ids, -> typed entries (no bytes).

Backend slots move as little as possible when backends come and go (`stable_slots`), so a
change touches few entries and established per-packet connections keep their slots.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field

from cilia.lb.entries import LbEntries, MaglevEntry, RevNatEntry, ServiceEntry, SlotEntry, SlotKey
from cilia.lb.maglev import MaglevBackend, build_table
from cilia.lb.model import Backend, FrontendKey, IPAddress, LbFrontend, ServiceSpec


@dataclass
class ServiceState:
    """What one service contributes to the maps, as last written. `entries` holds its services,
    rev-NAT and Maglev entries; backends are shared between services and kept by the engine."""

    spec: ServiceSpec | None
    cluster_ips: tuple[IPAddress, ...] = ()
    frontends: list[LbFrontend] = field(default_factory=list)
    entries: LbEntries = field(default_factory=LbEntries)
    backend_ids: set[int] = field(default_factory=set)
    conflicts: list[str] = field(default_factory=list)
    conflicted: set[FrontendKey] = field(default_factory=set)  # frontends another service owns


def stable_slots(previous: list[int], active: list[int]) -> list[int]:
    """Slot order for a service's active backends that moves as few slots as possible: kept
    backends stay where they were, newcomers fill holes, and the tail fills what is left."""
    wanted = set(active)
    slots: list[int | None] = [b if b in wanted else None for b in previous]
    newcomers = [b for b in sorted(wanted) if b not in set(previous)]
    for index, value in enumerate(slots):
        if value is None and newcomers:
            slots[index] = newcomers.pop(0)
    slots.extend(newcomers)
    while None in slots:
        hole = slots.index(None)
        last = slots.pop()
        if last is not None and hole < len(slots):
            slots[hole] = last
    return [b for b in slots if b is not None]


def maglev_key(backend: Backend) -> str:
    """The name a backend's Maglev permutation is derived from. Not cilia.hostport's text: an IPv6
    backend is `fd00::5:8080` here, and changing it would reshuffle every table after an upgrade."""
    return f"{backend.address}:{backend.port}"


def frontend_entries(frontend: LbFrontend, rev_nat_id: int, backend_ids: Mapping[Backend, int],
                     previous_slots: list[int], maglev_size: int, maglev_seed: int) -> LbEntries:
    """One frontend's entries: its service entry, a slot per active backend (kept where
    `previous_slots` had them), its rev-NAT entry and, for an external one, its Maglev table."""
    entries = LbEntries()
    master = SlotKey(frontend.key.address, frontend.key.port, frontend.key.protocol.number)
    active = [backend_ids[b] for b in frontend.backends if b.state.selectable]
    slots = stable_slots(previous_slots, active)
    maglev = frontend.type.external and bool(active)
    if maglev:
        table = build_table([MaglevBackend(backend_ids[b], maglev_key(b), b.weight)
                             for b in frontend.backends if b.state.selectable], maglev_size, maglev_seed)
        entries.maglev[rev_nat_id] = MaglevEntry(array("I", table))
    entries.services[master] = ServiceEntry(
        count=len(slots), rev_nat_id=rev_nat_id, external=frontend.type.external,
        affinity=bool(frontend.affinity_timeout), maglev=maglev, affinity_timeout=frontend.affinity_timeout or 0)
    for slot, backend_id in enumerate(slots, start=1):
        entries.services[master.at(slot)] = SlotEntry(backend_id)
    entries.revnat[rev_nat_id] = RevNatEntry(frontend.key.address, frontend.key.port)
    return entries
