"""The contract checker (cilia.maps.layout) on hand-written C descriptions: it reports a shifted
field, a size change, a missing or extra member, a map naming another struct and a drifted enum,
each by name. The real comparison with the objects' BTF is tests/kernel/test_datapath_contract.py."""

from __future__ import annotations

from dataclasses import dataclass

from cilia.maps.layout import CStruct, Scalar, enum_mismatches, map_side_mismatches, mismatches
from cilia.maps.policy import ENTRY


@dataclass(frozen=True)
class Member:
    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class Struct:
    name: str
    size: int
    members: tuple[Member, ...]


@dataclass(frozen=True)
class TypeRef:
    kind: str
    name: str
    size: int


# struct policy_entry { __u32 rule_id; __u8 verdict; __u8 pad[3]; }
POLICY_ENTRY = Struct("policy_entry", 8, (Member("rule_id", 0, 4), Member("verdict", 4, 1), Member("pad", 5, 3)))


def test_a_matching_mirror_has_no_mismatch() -> None:
    assert ENTRY.c_name == "policy_entry" and ENTRY.size == 8
    assert mismatches(ENTRY, POLICY_ENTRY) == []


def test_a_shifted_field_is_named_with_both_offsets() -> None:
    shifted = CStruct("policy_entry", ("rule_id", "I"), ("pad", "x"), ("verdict", "B"), ("pad2", "2x"))
    assert mismatches(shifted, POLICY_ENTRY) == [
        "struct policy_entry.pad: offset 5 size 3 in C, offset 4 size 1 in Python",
        "struct policy_entry.verdict: offset 4 size 1 in C, offset 5 size 1 in Python",
        "struct policy_entry.pad2: no such member in C (C has rule_id, verdict, pad)",
    ]


def test_size_and_unmirrored_members_are_reported() -> None:
    short = CStruct("policy_entry", ("rule_id", "I"), ("verdict", "B"))
    assert mismatches(short, POLICY_ENTRY) == [
        "struct policy_entry: 8 bytes in C, 5 in Python (<IB)",
        "struct policy_entry.pad: a C member Python does not mirror",
    ]


def test_a_union_slot_mirrors_every_member_of_the_union() -> None:
    record = Struct("rec", 8, (Member("type", 0, 4), Member("rule_id", 4, 4), Member("rev_nat_id", 4, 4)))
    both = CStruct("rec", ("type", "I"), (("rule_id", "rev_nat_id"), "I"))
    assert mismatches(both, record) == []
    assert both.offset("rev_nat_id") == 4 and both.head("rule_id").format == "<I"
    one = CStruct("rec", ("type", "I"), ("rule_id", "I"))
    assert mismatches(one, record) == ["struct rec.rev_nat_id: a C member Python does not mirror"]


def test_a_map_side_must_name_the_mirrored_struct() -> None:
    assert map_side_mismatches("m", "value", ENTRY, TypeRef("struct", "policy_entry", 8)) == []
    assert map_side_mismatches("m", "value", ENTRY, TypeRef("struct", "lb_conn", 8)) == [
        "map m value: struct lb_conn (8 bytes) in C, Python mirrors struct policy_entry (8 bytes)"]
    assert map_side_mismatches("m", "key", Scalar("__u32", 4), TypeRef("int", "unsigned int", 4)) == []
    assert map_side_mismatches("m", "key", Scalar("__u32", 4), TypeRef("int", "unsigned long long", 8)) == [
        "map m key: 8 bytes in C, 4 in Python"]
    assert map_side_mismatches("ring", "key", None, None) == []
    assert map_side_mismatches("m", "key", None, TypeRef("int", "unsigned int", 4)) == [
        "map m key: int unsigned int (4 bytes) in C, none in Python"]


def test_enum_drift_missing_and_extra_enumerators() -> None:
    in_c = {"DIR_INGRESS": 0, "DIR_EGRESS": 1, "DIR_NEW": 2}
    assert enum_mismatches("direction", in_c, {"DIR_INGRESS": 0, "DIR_EGRESS": 2, "DIR_OLD": 3}) == [
        "enum direction: DIR_EGRESS = 1 in C, 2 in Python",
        "enum direction: DIR_NEW = 2 in C, missing in Python",
        "enum direction: DIR_OLD = 3 in Python, no such enumerator in C",
    ]
    assert enum_mismatches("direction", in_c, {"DIR_INGRESS": 0, "DIR_EGRESS": 1}, c_only={"DIR_NEW"}) == []
