"""The service load-balancing maps (C: bpf/lib/lb.h): codecs and the writer.

Two layers of codecs: records that mirror the C structs field for field (`ServiceKey`,
`ServiceValue`, `BackendValue`, `RevNatValue`: for dumps, and for tests and benches that build
entries by hand), and the packing of the service engine's typed entries (cilia.lb.entries,
cilia.lb.affinity), which is the only place those become bytes. The engine decides what the maps
hold and in which order operations run (cilia.lb.reconcile); this module knows layouts, not policy.
"""

from __future__ import annotations

import logging
import socket
import struct
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cilia.lb.affinity import AffinityEntry, AffinityKey
from cilia.lb.entries import (
    BackendEntry,
    LbEntries,
    LbTable,
    MaglevEntry,
    RevNatEntry,
    ServiceEntry,
    SlotEntry,
    SlotKey,
    SlotValue,
)
from cilia.lb.maglev import DEFAULT_SIZE
from cilia.lb.model import BackendState
from cilia.lb.reconcile import EntryValue, LbChanges, LbKeys, LbMapError, Operation, Put, plan
from cilia.maps.addr import AF_INET, IPAddress, addr16, from_addr16
from cilia.maps.ct import TUPLE
from cilia.maps.layout import CStruct, MapLayout, Scalar

if TYPE_CHECKING:  # a type only: the codecs import without libbpf
    from cilia.bpf import BpfMap

log = logging.getLogger(__name__)

SERVICES_NAME = "cilia_lb_services_v1"
BACKENDS_NAME = "cilia_lb_backends_v1"
REVNAT_NAME = "cilia_lb_revnat_v1"
AFFINITY_NAME = "cilia_lb_affinity_v1"
CONN_NAME = "cilia_lb_conn_v1"
SOCK_NAME = "cilia_lb_sock_v1"
MAGLEV_NAME = "cilia_lb_maglev_v1"
NAMES = (SERVICES_NAME, BACKENDS_NAME, REVNAT_NAME, AFFINITY_NAME, CONN_NAME, SOCK_NAME, MAGLEV_NAME)
# Sized together by --bpf-lb-map-max (Cilium's default 65536); the conn and sock tables are LRU caches.
SIZED_BY_MAP_MAX = (SERVICES_NAME, BACKENDS_NAME, REVNAT_NAME, AFFINITY_NAME, MAGLEV_NAME)
MAP_MAX = 65536
DEFAULT_MAGLEV_SIZE = DEFAULT_SIZE  # one definition: cilia.lb.maglev

SVC_F_EXTERNAL = 1 << 0
SVC_F_AFFINITY = 1 << 1
SVC_F_MAGLEV = 1 << 2
BACKEND_STATES = {"active": 0, "terminating": 1, "quarantined": 2}
BACKEND_STATE_NAMES = {v: k for k, v in BACKEND_STATES.items()}

SERVICE_KEY = CStruct("lb_service_key", ("address", "16s"), ("dport", "2s"), ("slot", "H"), ("proto", "B"),
                      ("pad", "3x"))
SERVICE_VALUE = CStruct("lb_service_value", ("backend_id", "I"), ("affinity_timeout", "I"), ("count", "H"),
                        ("rev_nat_id", "H"), ("flags", "B"), ("pad", "3x"))
BACKEND = CStruct("lb_backend", ("address", "16s"), ("port", "2s"), ("proto", "B"), ("state", "B"))
REVNAT = CStruct("lb_rev_nat", ("address", "16s"), ("port", "2s"), ("pad", "2x"))
AFFINITY_KEY = CStruct("lb_affinity_key", ("client", "16s"), ("rev_nat_id", "I"), ("netns", "I"))
AFFINITY_VALUE = CStruct("lb_affinity_value", ("backend_id", "I"), ("last_used", "I"))
# The datapath's own tables (per-packet connections, socket-path UDP replies): the agent only sizes them.
CONN = CStruct("lb_conn", ("backend_id", "I"), ("rev_nat_id", "H"), ("flags", "B"), ("pad", "x"))
SOCK_KEY = CStruct("lb_sock_key", ("cookie", "Q"), ("address", "16s"), ("port", "2s"), ("pad", "2x"),
                   ("pad2", "4x"))
SOCK_VALUE = CStruct("lb_sock_value", ("address", "16s"), ("port", "2s"), ("rev_nat_id", "H"))
_ID = Scalar("__u32", 4)
LAYOUTS = (
    MapLayout(SERVICES_NAME, SERVICE_KEY, SERVICE_VALUE),
    MapLayout(BACKENDS_NAME, _ID, BACKEND),
    MapLayout(REVNAT_NAME, _ID, REVNAT),
    MapLayout(AFFINITY_NAME, AFFINITY_KEY, AFFINITY_VALUE),
    MapLayout(CONN_NAME, TUPLE, CONN),
    MapLayout(SOCK_NAME, SOCK_KEY, SOCK_VALUE),
    # M backend ids; the object's placeholder size is the default M, the agent sets the real one at load
    MapLayout(MAGLEV_NAME, _ID, Scalar("__u32[LB_MAGLEV_DEFAULT_SIZE]", 4 * DEFAULT_MAGLEV_SIZE)),
)
_SVC_KEY = SERVICE_KEY.codec
_SVC_VALUE = SERVICE_VALUE.codec
_BACKEND = BACKEND.codec
_REVNAT = REVNAT.codec
_U32 = struct.Struct("<I")
_AFFINITY_KEY = AFFINITY_KEY.codec
_AFFINITY_VALUE = AFFINITY_VALUE.codec


def _port(port: int) -> bytes:
    return port.to_bytes(2, "big")


_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def _from16(raw: bytes) -> IPAddress:
    """A 16-byte address: v4-mapped is IPv4 (cilia.maps.addr.addr16), anything else IPv6."""
    return from_addr16(raw, AF_INET if raw[:12] == _V4_MAPPED else socket.AF_INET6)


# The packing of each struct, shared by the C-mirror records and the typed-entry codecs below.
def _pack_svc_key(address: IPAddress, port: int, protocol: int, slot: int) -> bytes:
    return _SVC_KEY.pack(addr16(address), _port(port), slot, protocol)


def _unpack_svc_key(raw: bytes) -> tuple[IPAddress, int, int, int]:
    address, port, slot, protocol = _SVC_KEY.unpack(raw)
    return _from16(address), int.from_bytes(port, "big"), protocol, slot


def _pack_svc_value(backend_id: int, count: int, rev_nat_id: int, flags: int, affinity_timeout: int) -> bytes:
    return _SVC_VALUE.pack(backend_id, affinity_timeout, count, rev_nat_id, flags)


def _unpack_svc_value(raw: bytes) -> tuple[int, int, int, int, int]:
    """backend_id, count, rev_nat_id, flags, affinity_timeout"""
    backend_id, timeout, count, rev_nat_id, flags = _SVC_VALUE.unpack(raw[: _SVC_VALUE.size])
    return backend_id, count, rev_nat_id, flags, timeout


def _pack_backend(address: IPAddress, port: int, protocol: int, state: int) -> bytes:
    return _BACKEND.pack(addr16(address), _port(port), protocol, state)


def _unpack_backend(raw: bytes) -> tuple[IPAddress, int, int, int]:
    address, port, protocol, state = _BACKEND.unpack(raw[: _BACKEND.size])
    return _from16(address), int.from_bytes(port, "big"), protocol, state


def _pack_revnat(address: IPAddress, port: int) -> bytes:
    return _REVNAT.pack(addr16(address), _port(port))


def _unpack_revnat(raw: bytes) -> tuple[IPAddress, int]:
    address, port = _REVNAT.unpack(raw[: _REVNAT.size])
    return _from16(address), int.from_bytes(port, "big")


@dataclass(frozen=True)
class ServiceKey:
    address: IPAddress
    port: int
    protocol: int  # IP protocol number
    slot: int = 0

    def pack(self) -> bytes:
        return _pack_svc_key(self.address, self.port, self.protocol, self.slot)

    @classmethod
    def unpack(cls, raw: bytes) -> ServiceKey:
        return cls(*_unpack_svc_key(raw))


@dataclass(frozen=True)
class ServiceValue:
    """Slot 0: count, rev_nat_id, flags, affinity timeout. Slot n: backend_id."""

    backend_id: int = 0
    count: int = 0
    rev_nat_id: int = 0
    flags: int = 0
    affinity_timeout: int = 0

    def pack(self) -> bytes:
        return _pack_svc_value(self.backend_id, self.count, self.rev_nat_id, self.flags, self.affinity_timeout)

    @classmethod
    def unpack(cls, raw: bytes) -> ServiceValue:
        return cls(*_unpack_svc_value(raw))


@dataclass(frozen=True)
class BackendValue:
    address: IPAddress
    port: int
    protocol: int
    state: int = 0

    def pack(self) -> bytes:
        return _pack_backend(self.address, self.port, self.protocol, self.state)

    @classmethod
    def unpack(cls, raw: bytes) -> BackendValue:
        return cls(*_unpack_backend(raw))


@dataclass(frozen=True)
class RevNatValue:
    address: IPAddress
    port: int

    def pack(self) -> bytes:
        return _pack_revnat(self.address, self.port)

    @classmethod
    def unpack(cls, raw: bytes) -> RevNatValue:
        return cls(*_unpack_revnat(raw))


def pack_id(value: int) -> bytes:
    return _U32.pack(value)


def unpack_id(raw: bytes) -> int:
    return int(_U32.unpack(raw[:4])[0])


def pack_maglev(table: Iterable[int], size: int) -> bytes:
    values = list(table)
    if len(values) != size:
        raise ValueError(f"a Maglev table has {size} entries, got {len(values)}")
    return struct.pack(f"<{size}I", *values)


def unpack_maglev(raw: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))


def unpack_affinity_value(raw: bytes) -> tuple[int, int]:
    backend_id, last_used = _AFFINITY_VALUE.unpack(raw[: _AFFINITY_VALUE.size])
    return int(backend_id), int(last_used)


# ----- typed entries (cilia.lb.entries, cilia.lb.affinity) <-> bytes ----------------------------------

def pack_slot_key(key: SlotKey) -> bytes:
    return _pack_svc_key(key.address, key.port, key.protocol, key.slot)


def unpack_slot_key(raw: bytes) -> SlotKey:
    return SlotKey(*_unpack_svc_key(raw))


def pack_slot_value(value: SlotValue) -> bytes:
    if isinstance(value, SlotEntry):
        return _pack_svc_value(value.backend_id, 0, 0, 0, 0)
    flags = (SVC_F_EXTERNAL if value.external else 0) | (SVC_F_AFFINITY if value.affinity else 0) | \
        (SVC_F_MAGLEV if value.maglev else 0)
    return _pack_svc_value(0, value.count, value.rev_nat_id, flags, value.affinity_timeout)


def unpack_slot_value(raw: bytes, slot: int) -> SlotValue:
    """Slot 0 holds the service entry, any other slot a backend id."""
    backend_id, count, rev_nat_id, flags, affinity_timeout = _unpack_svc_value(raw)
    if slot:
        return SlotEntry(backend_id)
    return ServiceEntry(count=count, rev_nat_id=rev_nat_id, external=bool(flags & SVC_F_EXTERNAL),
                        affinity=bool(flags & SVC_F_AFFINITY), maglev=bool(flags & SVC_F_MAGLEV),
                        affinity_timeout=affinity_timeout)


_BACKEND_STATE_OF = {number: BackendState(name) for number, name in BACKEND_STATE_NAMES.items()}


def pack_backend(entry: BackendEntry) -> bytes:
    return _pack_backend(entry.address, entry.port, entry.protocol, BACKEND_STATES[entry.state.value])


def unpack_backend(raw: bytes) -> BackendEntry:
    address, port, protocol, number = _unpack_backend(raw)
    state = _BACKEND_STATE_OF.get(number)
    if state is None:
        raise ValueError(f"backend state {number} is none of {BACKEND_STATE_NAMES}")
    return BackendEntry(address, port, protocol, state)


def pack_revnat(entry: RevNatEntry) -> bytes:
    return _pack_revnat(entry.address, entry.port)


def unpack_revnat(raw: bytes) -> RevNatEntry:
    return RevNatEntry(*_unpack_revnat(raw))


def unpack_maglev_entry(raw: bytes) -> MaglevEntry:
    return MaglevEntry(array("I", unpack_maglev(raw)))


def pack_affinity_key(key: AffinityKey) -> bytes:
    """The client is an address (per-packet path) or a netns cookie in the first 8 bytes (socket path)."""
    if isinstance(key.client, int):
        return _AFFINITY_KEY.pack(key.client.to_bytes(8, "little") + bytes(8), key.rev_nat_id, 1)
    return _AFFINITY_KEY.pack(addr16(key.client), key.rev_nat_id, 0)


def unpack_affinity_key(raw: bytes) -> AffinityKey:
    client, rev_nat_id, netns = _AFFINITY_KEY.unpack(raw)
    if netns:
        return AffinityKey(rev_nat_id, int.from_bytes(client[:8], "little"))
    return AffinityKey(rev_nat_id, _from16(client))


def _pack_key(key: SlotKey | int) -> bytes:
    return pack_slot_key(key) if isinstance(key, SlotKey) else pack_id(key)


Entries = dict[bytes, bytes]
# The maps the service engine programs (cilia.lb.entries.LbTable); the write order is cilia.lb.reconcile's.
MAP_OF_TABLE = {LbTable.SERVICES: SERVICES_NAME, LbTable.BACKENDS: BACKENDS_NAME, LbTable.REVNAT: REVNAT_NAME,
                LbTable.MAGLEV: MAGLEV_NAME}
ENGINE_MAPS = tuple(MAP_OF_TABLE.values())


def _decoded(raw: Entries, name: str, key_of: Callable[[bytes], Any],
             value_of: Callable[[bytes, Any], Any]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for raw_key, raw_value in raw.items():
        key = key_of(raw_key)
        try:
            out[key] = value_of(raw_value, key)
        except ValueError as exc:  # not written by us: left out, so it is overwritten or left alone
            log.warning("%s: entry %s does not decode: %s", name, raw_key.hex(), exc)
    return out


class LbMaps:
    """The node's LB maps by name: typed reads and ordered writes for the service engine
    (cilia.lb.manager.LbMapsPort), raw snapshots for dumps."""

    def __init__(self, maps: Mapping[str, BpfMap], maglev_size: int) -> None:
        self.maps = dict(maps)
        self.maglev_size = maglev_size

    def snapshot(self, names: Iterable[str] = ENGINE_MAPS) -> dict[str, Entries]:
        """What the maps hold now, packed."""
        return {name: dict(self.maps[name].items()) for name in names}

    def entries(self) -> LbEntries:
        """What the services, backends, rev-NAT and Maglev maps hold now, as typed entries."""
        raw = self.snapshot()
        return LbEntries(
            services=_decoded(raw[SERVICES_NAME], SERVICES_NAME, unpack_slot_key,
                              lambda v, k: unpack_slot_value(v, k.slot)),
            backends=_decoded(raw[BACKENDS_NAME], BACKENDS_NAME, unpack_id, lambda v, _k: unpack_backend(v)),
            revnat=_decoded(raw[REVNAT_NAME], REVNAT_NAME, unpack_id, lambda v, _k: unpack_revnat(v)),
            maglev=_decoded(raw[MAGLEV_NAME], MAGLEV_NAME, unpack_id, lambda v, _k: unpack_maglev_entry(v)))

    def _pack_value(self, value: EntryValue) -> bytes:
        if isinstance(value, ServiceEntry | SlotEntry):
            return pack_slot_value(value)
        if isinstance(value, BackendEntry):
            return pack_backend(value)
        if isinstance(value, RevNatEntry):
            return pack_revnat(value)
        return pack_maglev(value.table, self.maglev_size)

    def write(self, operations: Sequence[Operation]) -> int:
        """Run the operations in the order given (cilia.lb.reconcile.plan orders them); the number
        done. A failed map operation raises LbMapError: the operations before it stay done."""
        done = 0
        try:
            for op in operations:
                bpf_map = self.maps[MAP_OF_TABLE[op.table]]
                if isinstance(op, Put):
                    bpf_map.update(_pack_key(op.key), self._pack_value(op.value))
                else:
                    bpf_map.delete(_pack_key(op.key))
                done += 1
        except Exception as exc:
            from cilia.bpf.errors import BpfError  # here only: the codecs above import without libbpf

            if isinstance(exc, BpfError):
                raise LbMapError(str(exc)) from exc
            raise
        return done

    def apply(self, upserts: Mapping[str, Entries], deletes: Mapping[str, Iterable[bytes]]) -> int:
        """Write packed `upserts` and remove packed `deletes` (entries built by hand: tests, benches),
        in the order the engine's writes take (cilia.lb.reconcile). Returns the number of map operations."""
        services = upserts.get(SERVICES_NAME, {})
        changes = LbChanges(
            LbEntries(
                services={unpack_slot_key(k): unpack_slot_value(v, ServiceKey.unpack(k).slot)
                          for k, v in services.items()},
                backends={unpack_id(k): unpack_backend(v) for k, v in upserts.get(BACKENDS_NAME, {}).items()},
                revnat={unpack_id(k): unpack_revnat(v) for k, v in upserts.get(REVNAT_NAME, {}).items()},
                maglev={unpack_id(k): unpack_maglev_entry(v) for k, v in upserts.get(MAGLEV_NAME, {}).items()}),
            LbKeys(services=[unpack_slot_key(k) for k in deletes.get(SERVICES_NAME, ())],
                   backends=[unpack_id(k) for k in deletes.get(BACKENDS_NAME, ())],
                   revnat=[unpack_id(k) for k in deletes.get(REVNAT_NAME, ())],
                   maglev=[unpack_id(k) for k in deletes.get(MAGLEV_NAME, ())]))
        return self.write(plan(changes))

    def affinity(self) -> dict[AffinityKey, AffinityEntry]:
        """The datapath's affinity entries (it creates and refreshes them; the agent expires them)."""
        return {unpack_affinity_key(k): AffinityEntry(*unpack_affinity_value(v))
                for k, v in self.maps[AFFINITY_NAME].items()}

    def delete_affinity(self, keys: Iterable[AffinityKey]) -> int:
        return sum(self.maps[AFFINITY_NAME].delete(pack_affinity_key(key)) for key in keys)
