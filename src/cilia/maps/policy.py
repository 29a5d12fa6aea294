"""cilia_policy_state_v1, cilia_policy_sel_v1, cilia_policy_v1: endpoint policy (C: bpf/lib/policy.h).

`PolicyMaps.install(endpoint, state)` makes one endpoint's policy live atomically: the entries
are written under the endpoint's inactive generation, one update of its state entry flips the
generation, then the old generation's entries are removed. What each endpoint has installed is
remembered in memory; after a restart `scan()` rebuilds that from the pinned maps.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntFlag
from typing import TYPE_CHECKING

from cilia.maps.direction import TrafficDirection
from cilia.maps.layout import CStruct, MapLayout, Scalar
from cilia.policy.mapstate import MapState, PortKey, PortValue
from cilia.policy.rules import Direction

if TYPE_CHECKING:  # a type only: the codecs import without libbpf
    from cilia.bpf import BpfMap

STATE_NAME = "cilia_policy_state_v1"
SEL_NAME = "cilia_policy_sel_v1"
POLICY_NAME = "cilia_policy_v1"
NAMES = (STATE_NAME, SEL_NAME, POLICY_NAME)



class StateFlag(IntFlag):
    """policy_state.flags (C: enum policy_state_flags)."""

    GENERATION = 1 << 0
    INGRESS_LOOKUP = 1 << 1
    EGRESS_LOOKUP = 1 << 2
    INGRESS_ENFORCED = 1 << 3
    EGRESS_ENFORCED = 1 << 4
    AUDIT = 1 << 5
    ALLOW_HOST_INGRESS = 1 << 6
    FAILED = 1 << 7


STATE = CStruct("policy_state", ("flags", "I"), ("revision", "I"))
SEL_KEY = CStruct("policy_sel_key", ("identity", "I"), ("endpoint_id", "H"), ("dir_gen", "B"), ("pad", "x"))
LPM_KEY = CStruct("policy_key", ("prefixlen", "I"), ("endpoint_id", "H"), ("class_id", "H"), ("dir_gen", "B"),
                  ("proto", "B"), ("dport", "2s"))
ENTRY = CStruct("policy_entry", ("rule_id", "I"), ("verdict", "B"), ("pad", "3x"))
_U32_SCALAR = Scalar("__u32", 4)
LAYOUTS = (
    MapLayout(STATE_NAME, _U32_SCALAR, STATE),  # endpoint id -> state
    MapLayout(SEL_NAME, SEL_KEY, _U32_SCALAR),  # -> identity class
    MapLayout(POLICY_NAME, LPM_KEY, ENTRY),
)
_STATE = STATE.codec
_SEL_KEY = SEL_KEY.codec
_U32 = struct.Struct("<I")
_LPM_KEY = LPM_KEY.codec
_ENTRY = ENTRY.codec
_FIXED_BITS = 40  # endpoint id, class and direction+generation


def state_flags(state: MapState) -> int:
    flags = 0
    if state.ingress.lookup:
        flags |= StateFlag.INGRESS_LOOKUP
    if state.egress.lookup:
        flags |= StateFlag.EGRESS_LOOKUP
    if state.ingress.enforced:
        flags |= StateFlag.INGRESS_ENFORCED
    if state.egress.enforced:
        flags |= StateFlag.EGRESS_ENFORCED
    if state.audit:
        flags |= StateFlag.AUDIT
    if state.allow_host_ingress:
        flags |= StateFlag.ALLOW_HOST_INGRESS
    return flags


def dir_gen_of(direction: Direction, generation: int) -> int:
    """The keys' direction+generation byte: TrafficDirection << 1 | generation."""
    return int(TrafficDirection[direction.name]) << 1 | generation


def sel_key(identity: int, endpoint_id: int, dir_gen: int) -> bytes:
    return _SEL_KEY.pack(identity, endpoint_id, dir_gen)


def lpm_key(endpoint_id: int, klass: int, dir_gen: int, key: PortKey) -> bytes:
    return _LPM_KEY.pack(_FIXED_BITS + key.prefix_bits, endpoint_id, klass, dir_gen, key.protocol,
                         key.port.to_bytes(2, "big"))


@dataclass
class Installed:
    """What one endpoint has in the maps under its active generation."""

    flags: int = 0
    sel: dict[bytes, bytes] = field(default_factory=dict)
    lpm: dict[bytes, bytes] = field(default_factory=dict)
    stale: list[tuple[BpfMap, bytes]] = field(default_factory=list)  # inactive-generation leftovers

    @property
    def generation(self) -> int:
        return self.flags & StateFlag.GENERATION


def encode(state: MapState, endpoint_id: int, generation: int) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    sel: dict[bytes, bytes] = {}
    lpm: dict[bytes, bytes] = {}
    for direction in Direction:
        dstate = state.direction(direction)
        dir_gen = dir_gen_of(direction, generation)
        for identity, klass in dstate.classes.items():
            sel[sel_key(identity, endpoint_id, dir_gen)] = _U32.pack(klass)
        for (klass, key), value in dstate.ports.items():
            lpm[lpm_key(endpoint_id, klass, dir_gen, key)] = _ENTRY.pack(value.rule_id, value.verdict)
    return sel, lpm


@dataclass(frozen=True)
class ClassEntry:
    """Selector map: this identity is in identity class `klass` of the endpoint's direction."""

    direction: Direction
    identity: int
    klass: int


@dataclass(frozen=True)
class PortEntry:
    """Port map: (class, protocol/port prefix) -> verdict and rule id."""

    direction: Direction
    klass: int
    key: PortKey
    value: PortValue


@dataclass(frozen=True)
class InstalledEntries:
    """One endpoint's live policy entries as the maps hold them."""

    endpoint_id: int
    flags: int
    classes: list[ClassEntry]
    ports: list[PortEntry]


class PolicyMaps:
    def __init__(self, state_map: BpfMap, sel_map: BpfMap, policy_map: BpfMap) -> None:
        self.state_map = state_map
        self.sel_map = sel_map
        self.policy_map = policy_map
        self.installed: dict[int, Installed] = {}

    def scan(self) -> None:
        """Rebuild `installed` from the pinned maps (agent restart): nothing is changed."""
        self.installed = {}
        for raw_key, raw_value in self.state_map.items():
            endpoint_id = _U32.unpack(raw_key)[0]
            self.installed[endpoint_id] = Installed(_STATE.unpack(raw_value)[0])
        for raw_key, raw_value in self.sel_map.items():
            _identity, endpoint_id, dir_gen = _SEL_KEY.unpack(raw_key)
            self._adopt(endpoint_id, dir_gen, self.sel_map, raw_key, raw_value, "sel")
        for raw_key, raw_value in self.policy_map.items():
            _plen, endpoint_id, _klass, dir_gen, _proto, _port = _LPM_KEY.unpack(raw_key)
            self._adopt(endpoint_id, dir_gen, self.policy_map, raw_key, raw_value, "lpm")

    def _adopt(self, endpoint_id: int, dir_gen: int, bpf_map: BpfMap, key: bytes, value: bytes, which: str) -> None:
        installed = self.installed.get(endpoint_id)
        if installed is None:  # entries of an endpoint without state: leftovers of a crash
            bpf_map.delete(key)
            return
        if dir_gen & 1 != installed.generation:
            installed.stale.append((bpf_map, key))
        else:
            getattr(installed, which)[key] = value

    def install(self, endpoint_id: int, state: MapState) -> bool:
        """Make `state` the endpoint's live policy. Returns False when it was already live.
        On a map error the endpoint is marked FAILED (its traffic is dropped) and the error raised."""
        current = self.installed.get(endpoint_id)
        flags = state_flags(state)
        if current is not None:
            sel, lpm = encode(state, endpoint_id, current.generation)
            if sel == current.sel and lpm == current.lpm:
                if flags | current.generation != current.flags:
                    current.flags = flags | current.generation
                    self.state_map.update(_U32.pack(endpoint_id), _STATE.pack(current.flags, 0))
                    return True
                return False
        generation = 0 if current is None else current.generation ^ 1
        sel, lpm = encode(state, endpoint_id, generation)
        if current is not None:
            for bpf_map, key in current.stale:
                bpf_map.delete(key)
            current.stale = []
        written: list[tuple[BpfMap, bytes]] = []
        try:
            for bpf_map, entries in ((self.sel_map, sel), (self.policy_map, lpm)):
                for key, value in entries.items():
                    bpf_map.update(key, value)
                    written.append((bpf_map, key))
            self.state_map.update(_U32.pack(endpoint_id), _STATE.pack(flags | generation, 0))
        except Exception:
            for bpf_map, key in written:
                bpf_map.delete(key)
            self.fail(endpoint_id)
            raise
        if current is not None:
            for bpf_map, entries in ((self.sel_map, current.sel), (self.policy_map, current.lpm)):
                for key in entries:
                    bpf_map.delete(key)
        self.installed[endpoint_id] = Installed(flags | generation, sel, lpm)
        return True

    def fail(self, endpoint_id: int) -> None:
        """Fail closed: the datapath drops the endpoint's traffic with 'policy not installed'."""
        current = self.installed.get(endpoint_id)
        flags = (current.flags if current else 0) | StateFlag.FAILED
        self.state_map.update(_U32.pack(endpoint_id), _STATE.pack(flags, 0))
        if current is not None:
            current.flags = flags
        else:
            self.installed[endpoint_id] = Installed(flags)

    def remove(self, endpoint_id: int) -> None:
        current = self.installed.pop(endpoint_id, None)
        self.state_map.delete(_U32.pack(endpoint_id))
        if current is None:
            return
        for bpf_map, entries in ((self.sel_map, current.sel), (self.policy_map, current.lpm)):
            for key in entries:
                bpf_map.delete(key)
        for bpf_map, key in current.stale:
            bpf_map.delete(key)

    def dump(self, endpoint_id: int) -> InstalledEntries | None:
        """The endpoint's live entries, decoded (for `cilia bpf policy get`); None when it has none."""
        current = self.installed.get(endpoint_id)
        if current is None:
            return None
        classes: list[ClassEntry] = []
        for raw_key, raw_value in sorted(current.sel.items()):
            identity, _ep, dir_gen = _SEL_KEY.unpack(raw_key)
            classes.append(ClassEntry(_direction(dir_gen), identity, _U32.unpack(raw_value)[0]))
        ports: list[PortEntry] = []
        for raw_key, raw_value in current.lpm.items():
            plen, _ep, klass, dir_gen, proto, port = _LPM_KEY.unpack(raw_key)
            key = PortKey(proto, int.from_bytes(port, "big"), max(0, plen - _FIXED_BITS - 8) if proto else 0)
            rule_id, verdict = _ENTRY.unpack(raw_value)
            ports.append(PortEntry(_direction(dir_gen), klass, key, PortValue(verdict, rule_id)))
        return InstalledEntries(endpoint_id, current.flags, classes, ports)


def _direction(dir_gen: int) -> Direction:
    return Direction.EGRESS if dir_gen >> 1 == TrafficDirection.EGRESS else Direction.INGRESS
