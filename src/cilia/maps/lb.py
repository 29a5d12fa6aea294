"""The service load-balancing maps (C: bpf/lib/lb.h): codecs and a diff writer.

Keys and values are packed from typed records here; the agent's service manager decides what the
maps should hold and hands over packed entries per map, so this module knows layouts, not policy.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cilia.bpf import BpfMap
from cilia.maps.addr import AF_INET, IPAddress, addr16, from_addr16

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
DEFAULT_MAGLEV_SIZE = 16381

SVC_F_EXTERNAL = 1 << 0
SVC_F_AFFINITY = 1 << 1
SVC_F_MAGLEV = 1 << 2
BACKEND_STATES = {"active": 0, "terminating": 1, "quarantined": 2}
BACKEND_STATE_NAMES = {v: k for k, v in BACKEND_STATES.items()}

_SVC_KEY = struct.Struct("<16s2sHB3x")
_SVC_VALUE = struct.Struct("<IIHHB3x")
_BACKEND = struct.Struct("<16s2sBB")
_REVNAT = struct.Struct("<16s2s2x")
_U32 = struct.Struct("<I")
_AFFINITY_KEY = struct.Struct("<16sII")
_AFFINITY_VALUE = struct.Struct("<II")


def _port(port: int) -> bytes:
    return port.to_bytes(2, "big")


def _family(address: IPAddress) -> int:
    return AF_INET if address.version == 4 else socket.AF_INET6


@dataclass(frozen=True)
class ServiceKey:
    address: IPAddress
    port: int
    protocol: int  # IP protocol number
    slot: int = 0

    def pack(self) -> bytes:
        return _SVC_KEY.pack(addr16(self.address), _port(self.port), self.slot, self.protocol)

    @classmethod
    def unpack(cls, raw: bytes) -> ServiceKey:
        address, port, slot, protocol = _SVC_KEY.unpack(raw)
        family = AF_INET if address[:12] == b"\0" * 10 + b"\xff\xff" else socket.AF_INET6
        return cls(from_addr16(address, family), int.from_bytes(port, "big"), protocol, slot)


@dataclass(frozen=True)
class ServiceValue:
    """Slot 0: count, rev_nat_id, flags, affinity timeout. Slot n: backend_id."""

    backend_id: int = 0
    count: int = 0
    rev_nat_id: int = 0
    flags: int = 0
    affinity_timeout: int = 0

    def pack(self) -> bytes:
        return _SVC_VALUE.pack(self.backend_id, self.affinity_timeout, self.count, self.rev_nat_id, self.flags)

    @classmethod
    def unpack(cls, raw: bytes) -> ServiceValue:
        backend_id, timeout, count, rev_nat_id, flags = _SVC_VALUE.unpack(raw[: _SVC_VALUE.size])
        return cls(backend_id, count, rev_nat_id, flags, timeout)


@dataclass(frozen=True)
class BackendValue:
    address: IPAddress
    port: int
    protocol: int
    state: int = 0

    def pack(self) -> bytes:
        return _BACKEND.pack(addr16(self.address), _port(self.port), self.protocol, self.state)

    @classmethod
    def unpack(cls, raw: bytes) -> BackendValue:
        address, port, protocol, state = _BACKEND.unpack(raw[: _BACKEND.size])
        family = AF_INET if address[:12] == b"\0" * 10 + b"\xff\xff" else socket.AF_INET6
        return cls(from_addr16(address, family), int.from_bytes(port, "big"), protocol, state)


@dataclass(frozen=True)
class RevNatValue:
    address: IPAddress
    port: int

    def pack(self) -> bytes:
        return _REVNAT.pack(addr16(self.address), _port(self.port))

    @classmethod
    def unpack(cls, raw: bytes) -> RevNatValue:
        address, port = _REVNAT.unpack(raw[: _REVNAT.size])
        family = AF_INET if address[:12] == b"\0" * 10 + b"\xff\xff" else socket.AF_INET6
        return cls(from_addr16(address, family), int.from_bytes(port, "big"))


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


@dataclass(frozen=True)
class AffinityKey:
    client: bytes  # 16 bytes: an address (v4-mapped) or a netns cookie in the first 8
    rev_nat_id: int
    netns: bool

    @classmethod
    def unpack(cls, raw: bytes) -> AffinityKey:
        client, rev_nat_id, netns = _AFFINITY_KEY.unpack(raw)
        return cls(client, rev_nat_id, bool(netns))

    def describe(self) -> str:
        if self.netns:
            return f"netns:{int.from_bytes(self.client[:8], 'little')}"
        family = AF_INET if self.client[:12] == b"\0" * 10 + b"\xff\xff" else socket.AF_INET6
        return str(from_addr16(self.client, family))


def unpack_affinity_value(raw: bytes) -> tuple[int, int]:
    backend_id, last_used = _AFFINITY_VALUE.unpack(raw[: _AFFINITY_VALUE.size])
    return int(backend_id), int(last_used)


Entries = dict[bytes, bytes]
WRITE_ORDER = (BACKENDS_NAME, REVNAT_NAME, MAGLEV_NAME, SERVICES_NAME)


def _is_master(service_key: bytes) -> bool:
    return service_key[18:20] == b"\0\0"


class LbMaps:
    """The node's LB maps by name, with an ordered diff writer."""

    def __init__(self, maps: Mapping[str, BpfMap], maglev_size: int) -> None:
        self.maps = dict(maps)
        self.maglev_size = maglev_size

    def snapshot(self, names: Iterable[str] = WRITE_ORDER) -> dict[str, Entries]:
        """What the maps hold now (for a restarted agent to diff against)."""
        return {name: dict(self.maps[name].items()) for name in names}

    def apply(self, upserts: Mapping[str, Entries], deletes: Mapping[str, Iterable[bytes]]) -> int:
        """Write `upserts` and remove `deletes`, ordered so the datapath never sees a dangling id:
        backends, rev-NAT entries and Maglev tables before the slots that name them, slots before
        their service entry (whose count makes them reachable); removal the other way round.
        Returns the number of map operations."""
        operations = 0
        for name in WRITE_ORDER:
            entries = upserts.get(name, {})
            keys = sorted(entries, key=_is_master) if name == SERVICES_NAME else list(entries)
            for key in keys:
                self.maps[name].update(key, entries[key])
                operations += 1
        for name in reversed(WRITE_ORDER):
            keys = list(deletes.get(name, ()))
            if name == SERVICES_NAME:
                keys.sort(key=lambda k: not _is_master(k))
            for key in keys:
                self.maps[name].delete(key)
                operations += 1
        return operations

    def affinity_entries(self) -> dict[bytes, tuple[int, int]]:
        return {k: unpack_affinity_value(v) for k, v in self.maps[AFFINITY_NAME].items()}

    def delete_affinity(self, keys: Iterable[bytes]) -> int:
        return sum(self.maps[AFFINITY_NAME].delete(key) for key in keys)
