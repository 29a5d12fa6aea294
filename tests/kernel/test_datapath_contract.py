"""The datapath contract: every Python codec and constant table against the C compiler's BTF.

Reads the BTF of build/bpf/*.o (the programs, and contract.o, which exists to carry the ring
records and enums no program's BTF reaches) and checks, field by field:
- every pinned map's key and value (each cilia.maps module's LAYOUTS): the struct the map
  definition names, its size, and every member's offset and size;
- the load-time configurations (`CONFIG`, `HOST` in .rodata) and the ring records (struct event,
  struct sock_event);
- every C enum against the Python table mirroring it (directions, drop reasons, verdicts,
  policy state flags, reserved identities, observation points, CT states, source files, event
  types, LB flags and states, endpoint flags, aggregation levels, ipcache flags);
- that a struct has one layout in every object that carries it.
Reading an object file's BTF needs no privileges; the objects must exist (CI builds them first).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from enum import Enum
from pathlib import Path

import pytest

import cilia.maps
from cilia.bpf.btf import Btf, Composite, MapDef, Variable
from cilia.datapath import config as dpconfig
from cilia.datapath.manager import default_bpf_dir
from cilia.identity.reserved import MIN_CLUSTER_IDENTITY, UNKNOWN_IDENTITY, ReservedIdentity
from cilia.lb import maglev
from cilia.maps import ct, ipcache
from cilia.maps import lb as lbm
from cilia.maps.direction import TrafficDirection
from cilia.maps.layout import CStruct, MapLayout, enum_mismatches, map_side_mismatches, mismatches
from cilia.maps.policy import StateFlag
from cilia.monitor import events as ev
from cilia.policy import mapstate

pytestmark = pytest.mark.kernel

PROGRAMS = ("bpf_lxc.o", "bpf_host.o", "bpf_overlay.o", "bpf_sock.o")
CONTRACT = "contract.o"
RECORDS = (ev.EVENT, ev.SOCK_EVENT, dpconfig.EP_CONFIG, dpconfig.HOST_CONFIG)


class ObjectBtf:
    """What one object's BTF says, read once."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            pytest.fail(f"{path} is missing: the contract is checked against the built objects (run `make bpf`)")
        with Btf.from_elf(path) as btf:
            self.name = path.name
            self.composites: dict[str, Composite] = btf.composites()
            self.enums: dict[str, dict[str, int]] = btf.enums()
            self.maps: dict[str, MapDef] = btf.maps()
            self.rodata: dict[str, Variable] = btf.datasec(".rodata")


@pytest.fixture(scope="module")
def objects() -> dict[str, ObjectBtf]:
    bpf_dir = default_bpf_dir()
    return {name: ObjectBtf(bpf_dir / name) for name in (*PROGRAMS, CONTRACT)}


def map_layouts() -> Iterator[MapLayout]:
    """Every cilia.maps module's declarations: a new map module is checked once it declares LAYOUTS."""
    for module in pkgutil.iter_modules(cilia.maps.__path__):
        yield from getattr(importlib.import_module(f"cilia.maps.{module.name}"), "LAYOUTS", ())


def named(prefix: str, enum: type[Enum]) -> dict[str, int]:
    return {prefix + member.name: int(member.value) for member in enum}


# C enum -> the Python table that mirrors it, as C enumerator name -> value.
ENUM_MIRRORS: dict[str, dict[str, int]] = {
    "direction": named("DIR_", TrafficDirection),
    "reserved_identity": named("IDENTITY_", ReservedIdentity)
    | {"IDENTITY_UNKNOWN": UNKNOWN_IDENTITY, "MIN_CLUSTER_IDENTITY": MIN_CLUSTER_IDENTITY},
    "drop_reason": named("DROP_", ev.DropReason) | {"REASON_FORWARDED": ev.REASON_FORWARDED},
    "event_type": named("EVENT_", ev.EventType),
    "obs_point": named("OBS_", ev.ObsPoint),
    "ct_status": named("CT_", ev.CtStatus),
    "source_file": named("SOURCE_FILE_", ev.SourceFile),
    "policy_verdict": named("VERDICT_", ev.PolicyVerdict),
    "verdict_flags": {"VERDICT_AUDIT_FLAG": ev.VERDICT_AUDIT_FLAG},
    "sock_xlate_point": named("SOCK_XLATE_", ev.SockXlatePoint),
    "policy_state_flags": named("PSTATE_", StateFlag),
    "lb_svc_flags": {"LB_SVC_F_EXTERNAL": lbm.SVC_F_EXTERNAL, "LB_SVC_F_AFFINITY": lbm.SVC_F_AFFINITY,
                     "LB_SVC_F_MAGLEV": lbm.SVC_F_MAGLEV},
    "lb_backend_state": {f"LB_BACKEND_{name.upper()}": value for name, value in lbm.BACKEND_STATES.items()},
    "lb_conn_flags": {},
    "lb_sizes": {"LB_MAP_MAX": lbm.MAP_MAX, "LB_MAGLEV_DEFAULT_SIZE": lbm.DEFAULT_MAGLEV_SIZE},
    "ep_flags": {"EP_FLAG_HAS_IPV4": dpconfig.FLAG_HAS_IPV4, "EP_FLAG_HAS_IPV6": dpconfig.FLAG_HAS_IPV6},
    "aggregation": {f"AGGREGATION_{name.upper()}": value for name, value in dpconfig.AGGREGATION_LEVELS.items()},
    "ipcache_flags": {"IPCACHE_F_CLUSTER": ipcache.FLAG_CLUSTER, "IPCACHE_F_NATIVE": ipcache.FLAG_NATIVE,
                      "IPCACHE_F_FQDN": ipcache.FLAG_FQDN},
}
# Enumerators Python has no use for, each with its reason.
C_ONLY: dict[str, set[str]] = {
    # the datapath's own connection table; Python never reads it
    "lb_conn_flags": {"LB_CONN_F_HAIRPIN", "LB_CONN_F_PROXY_UPSTREAM"},
    "lb_sizes": {"LB_CONN_MAX"},  # the LRU connection/socket tables keep their compiled size
}


def test_every_map_key_and_value_matches_its_c_struct(objects: dict[str, ObjectBtf]) -> None:
    problems: list[str] = []
    declared = {layout.name: layout for layout in map_layouts()}
    for obj in (objects[name] for name in PROGRAMS):
        for map_name, definition in obj.maps.items():
            layout = declared.get(map_name)
            if layout is None:
                problems.append(f"{obj.name}: map {map_name} has no Python layout (declare it in a cilia.maps LAYOUTS)")
                continue
            for side, mirror, c_type in (("key", layout.key, definition.key),
                                         ("value", layout.value, definition.value)):
                problems.extend(f"{obj.name}: {p}" for p in map_side_mismatches(map_name, side, mirror, c_type))
                if isinstance(mirror, CStruct) and c_type is not None and c_type.name == mirror.c_name:
                    problems.extend(f"{obj.name}: {p}" for p in mismatches(mirror, obj.composites[mirror.c_name]))
    in_objects = {name for obj in objects.values() for name in obj.maps}
    problems.extend(f"map {name}: declared in Python, defined by no object" for name in declared.keys() - in_objects)
    assert not problems, "\n".join(problems)
    # what the datapath shares is all mirrored: the ipcache, endpoints, CT, policy, LB, metrics and event maps
    assert len(declared) >= 17


def test_load_time_configurations_and_ring_records_match_their_c_structs(objects: dict[str, ObjectBtf]) -> None:
    problems: list[str] = []
    for record in RECORDS:
        c_struct = objects[CONTRACT].composites.get(record.c_name)
        if c_struct is None:
            problems.append(f"struct {record.c_name}: not in {CONTRACT}'s BTF (reference it from bpf/contract.c)")
        else:
            problems.extend(mismatches(record, c_struct))
    for obj in (objects[name] for name in PROGRAMS):
        for var_name, var in obj.rodata.items():
            mirror = dpconfig.RODATA.get(var_name)
            if mirror is None:
                problems.append(f"{obj.name}: .rodata variable {var_name} has no Python mirror (cilia.datapath.config)")
                continue
            problems.extend(f"{obj.name}: .rodata {var_name}: {p}"
                            for p in map_side_mismatches(var_name, "type", mirror, var.type))
            problems.extend(f"{obj.name}: {p}" for p in mismatches(mirror, obj.composites[mirror.c_name]))
    assert not problems, "\n".join(problems)
    assert "CONFIG" in objects["bpf_lxc.o"].rodata and "HOST" in objects["bpf_host.o"].rodata


def test_a_struct_has_one_layout_in_every_object(objects: dict[str, ObjectBtf]) -> None:
    seen: dict[str, tuple[str, Composite]] = {}
    problems: list[str] = []
    for obj in objects.values():
        for name, composite in obj.composites.items():
            if name in seen and seen[name][1] != composite:
                problems.append(f"struct {name}: {seen[name][0]} and {obj.name} disagree")
            seen.setdefault(name, (obj.name, composite))
    assert not problems, "\n".join(problems)


def test_every_c_enum_matches_its_python_table(objects: dict[str, ObjectBtf]) -> None:
    in_c = objects[CONTRACT].enums
    problems = [f"enum {name}: not in {CONTRACT}'s BTF (reference it from bpf/contract.c)"
                for name in ENUM_MIRRORS if name not in in_c]
    problems.extend(f"enum {name}: no Python mirror (add it to ENUM_MIRRORS)"
                    for name in in_c if name not in ENUM_MIRRORS)
    for name, python in ENUM_MIRRORS.items():
        if name in in_c:
            problems.extend(enum_mismatches(name, in_c[name], python, C_ONLY.get(name, ())))
    assert not problems, "\n".join(problems)


def test_tables_derived_from_the_enums_agree(objects: dict[str, ObjectBtf]) -> None:
    """Python's own copies of C values that live outside the enum mirrors."""
    enums = objects[CONTRACT].enums
    # cilia.policy (which may not import maps) writes policy_entry.verdict itself
    verdicts = enums["policy_verdict"]
    assert (verdicts["VERDICT_ALLOW"], verdicts["VERDICT_DENY"]) == (mapstate.ALLOW, mapstate.DENY)
    # lb.h declares the Maglev map with the default table's size (the agent sets the real one before
    # each load): cilia.lb.maglev's one definition (the map's value size is checked with the maps)
    assert enums["lb_sizes"]["LB_MAGLEV_DEFAULT_SIZE"] == maglev.DEFAULT_SIZE
    # a source file id names the program file that sends it
    root = Path(__file__).resolve().parents[2]
    assert all((root / "bpf" / name).is_file() for name in ev.SOURCE_FILES.values()), ev.SOURCE_FILES
    assert {ev.DROP_REASONS[r][0] for r in ev.POLICY_DROP_REASONS} == {"POLICY_DENIED", "POLICY_DENY",
                                                                       "POLICY_NOT_INSTALLED"}


def test_the_checker_names_a_shifted_field(objects: dict[str, ObjectBtf]) -> None:
    """The checks can fail: a ct_entry mirror with one field moved by a byte is reported by name."""
    fields = [(f.names[0], f.code) for f in ct.ENTRY.fields]
    assert fields[2] == ("tx_bytes", "Q")
    shifted = CStruct("ct_entry", *fields[:2], ("stray", "x"), *fields[2:])
    real = objects["bpf_lxc.o"].composites["ct_entry"]
    assert mismatches(ct.ENTRY, real) == []
    problems = mismatches(shifted, real)
    assert "struct ct_entry.tx_bytes: offset 16 size 8 in C, offset 17 size 8 in Python" in problems, problems
    assert "struct ct_entry: 56 bytes in C, 57 in Python (<QQxQQQIIBBBBBBH)" in problems, problems
    # and a map whose Python key names another struct
    wrong = MapLayout(ct.TCP_NAME, lbm.CONN, ct.ENTRY)
    c_key = objects["bpf_lxc.o"].maps[ct.TCP_NAME].key
    assert map_side_mismatches(wrong.name, "key", wrong.key, c_key) == [
        "map cilia_ct_tcp_v1 key: struct tuple (40 bytes) in C, Python mirrors struct lb_conn (8 bytes)",
        "map cilia_ct_tcp_v1 key: 40 bytes in C, 8 in Python"]
    # and an enum value that drifted
    drifted = ENUM_MIRRORS["direction"] | {"DIR_EGRESS": 2}
    assert enum_mismatches("direction", objects[CONTRACT].enums["direction"], drifted) == [
        "enum direction: DIR_EGRESS = 1 in C, 2 in Python"]
