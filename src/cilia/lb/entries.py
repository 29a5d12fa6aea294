"""What the LB maps hold, as typed entries (C: bpf/lib/lb.h): the service engine computes the
desired entries and reads the live ones back in this form; only cilia.maps.lb turns them into bytes.

  services  SlotKey -> ServiceEntry (slot 0: count, rev-NAT id, flags) or SlotEntry (slot n: a backend id)
  backends  backend id -> BackendEntry (address, port, protocol, state)
  revnat    rev-NAT id -> RevNatEntry (the frontend replies are rewritten to)
  maglev    rev-NAT id -> MaglevEntry (the lookup table of an external frontend)

Protocols are IP protocol numbers (cilia.ipproto), as in the maps: a live key of a protocol the
model has no name for must still be representable, so that a resync can remove it.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from cilia.lb.model import BackendState, IPAddress

BackendKey = tuple[IPAddress, int, int]  # address, port, IP protocol number: one backend id each


class LbTable(StrEnum):
    """The four maps the service engine programs (affinity, conn and sock the datapath keeps itself)."""

    SERVICES = "services"
    BACKENDS = "backends"
    REVNAT = "revnat"
    MAGLEV = "maglev"


@dataclass(frozen=True, order=True, slots=True)
class SlotKey:
    """A services-map key: a frontend and a slot (0: the service entry; 1..count: one active backend each)."""

    address: IPAddress
    port: int
    protocol: int  # IP protocol number
    slot: int = 0

    def at(self, slot: int) -> SlotKey:
        return SlotKey(self.address, self.port, self.protocol, slot)


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    """Slot 0 of a frontend: how many slots follow, its rev-NAT id and how it selects a backend."""

    count: int
    rev_nat_id: int
    external: bool = False  # reachable from outside: externalTrafficPolicy applies
    affinity: bool = False  # sessionAffinity ClientIP, for affinity_timeout seconds
    maglev: bool = False  # a Maglev table exists under the rev-NAT id
    affinity_timeout: int = 0


@dataclass(frozen=True, slots=True)
class SlotEntry:
    """Slot n of a frontend: one active backend."""

    backend_id: int


SlotValue = ServiceEntry | SlotEntry


@dataclass(frozen=True, slots=True)
class BackendEntry:
    address: IPAddress
    port: int
    protocol: int  # IP protocol number
    state: BackendState = BackendState.ACTIVE

    @property
    def key(self) -> BackendKey:
        return (self.address, self.port, self.protocol)


@dataclass(frozen=True, slots=True)
class RevNatEntry:
    """The frontend a reply of a translated connection is rewritten to."""

    address: IPAddress
    port: int


@dataclass(frozen=True, slots=True)
class MaglevEntry:
    """An external frontend's Maglev lookup table: M backend ids (M the configured table size).
    An array of 32-bit ids rather than a tuple: half the memory, and a node may hold thousands of
    tables of 16381 entries. Compared by content; never hashed."""

    table: array[int] = field(hash=False)


@dataclass
class LbEntries:
    """Contents of the four maps (desired, or as read back); the entries themselves are immutable."""

    services: dict[SlotKey, SlotValue] = field(default_factory=dict)
    backends: dict[int, BackendEntry] = field(default_factory=dict)
    revnat: dict[int, RevNatEntry] = field(default_factory=dict)
    maglev: dict[int, MaglevEntry] = field(default_factory=dict)

    def update(self, other: LbEntries) -> None:
        self.services.update(other.services)
        self.backends.update(other.backends)
        self.revnat.update(other.revnat)
        self.maglev.update(other.maglev)

    def __len__(self) -> int:
        return len(self.services) + len(self.backends) + len(self.revnat) + len(self.maglev)

    def slots(self, master: SlotKey) -> list[int]:
        """The backend ids in a frontend's slots 1..count, in slot order (0 for a missing slot);
        empty when the frontend has no service entry."""
        entry = self.services.get(master.at(0))
        if not isinstance(entry, ServiceEntry):
            return []
        slots = []
        for slot in range(1, entry.count + 1):
            value = self.services.get(master.at(slot))
            slots.append(value.backend_id if isinstance(value, SlotEntry) else 0)
        return slots

    def masters(self) -> Iterator[tuple[SlotKey, ServiceEntry]]:
        for key, value in self.services.items():
            if key.slot == 0 and isinstance(value, ServiceEntry):
                yield key, value
