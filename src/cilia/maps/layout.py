"""C layout mirrors: each codec's struct.Struct built from the C member names it mirrors.

A `CStruct` names the C struct and each field, so its offsets and sizes can be compared with the
C compiler's (BTF) field by field; `MapLayout` says what a pinned map's key and value are. The
checkers (`mismatches`, `map_side_mismatches`, `enum_mismatches`) take the C side as plain data
and return one message per difference, naming the struct, map or enum and the field; the datapath
contract test (tests/kernel/test_datapath_contract.py) feeds them the BTF of build/bpf/*.o.
Nothing here needs libbpf.

Formats are little-endian with no implicit padding ("<"), so C's padding is spelled out as named
pad fields ("3x") and a missing one shows up as a shifted offset.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Field:
    names: tuple[str, ...]  # the C member; several when the slot is a union (each one of its members)
    offset: int
    size: int
    code: str  # its struct format code


class CStruct:
    """`struct <c_name>` as Python packs it: fields are (C member name, struct format code);
    a union slot is ((name, name, ...), code)."""

    def __init__(self, c_name: str, *fields: tuple[str | tuple[str, ...], str]) -> None:
        self.c_name = c_name
        fmt = "<"
        laid_out: list[Field] = []
        for name, code in fields:
            offset = struct.calcsize(fmt)
            fmt += code
            names = (name,) if isinstance(name, str) else name
            laid_out.append(Field(names, offset, struct.calcsize(fmt) - offset, code))
        self.codec = struct.Struct(fmt)
        self.fields = tuple(laid_out)

    @property
    def size(self) -> int:
        return self.codec.size

    def offset(self, name: str) -> int:
        for f in self.fields:
            if name in f.names:
                return f.offset
        raise KeyError(f"struct {self.c_name} has no field {name!r}")

    def head(self, upto: str) -> struct.Struct:
        """The fields before `upto` as one Struct (a record's fixed header before its data)."""
        end = self.offset(upto)
        return struct.Struct("<" + "".join(f.code for f in self.fields if f.offset < end))

    def __repr__(self) -> str:
        return f"CStruct({self.c_name!r}, {self.codec.format!r})"


@dataclass(frozen=True)
class Scalar:
    """A map key or value that is no struct: a C integer (`__u32`) or a sized blob."""

    c_name: str
    size: int


@dataclass(frozen=True)
class MapLayout:
    """A pinned map: its name and what its key and value are (None: the map has none, a ring buffer)."""

    name: str
    key: CStruct | Scalar | None
    value: CStruct | Scalar | None


class CMember(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def offset(self) -> int: ...
    @property
    def size(self) -> int: ...


class CComposite(Protocol):
    """What the compiler says of a struct (cilia.bpf.btf.Composite has this shape)."""

    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def members(self) -> Sequence[CMember]: ...


def mismatches(mirror: CStruct, c: CComposite) -> list[str]:
    """Every way the Python layout differs from the C one, each naming the struct and the field."""
    where = f"struct {mirror.c_name}"
    problems: list[str] = []
    if c.name != mirror.c_name:
        problems.append(f"{where}: compared with struct {c.name}")
    if c.size != mirror.size:
        problems.append(f"{where}: {c.size} bytes in C, {mirror.size} in Python ({mirror.codec.format})")
    in_c = {m.name: m for m in c.members}
    mirrored: set[str] = set()
    for f in mirror.fields:
        for name in f.names:
            mirrored.add(name)
            member = in_c.get(name)
            if member is None:
                problems.append(f"{where}.{name}: no such member in C (C has {', '.join(in_c)})")
            elif (member.offset, member.size) != (f.offset, f.size):
                problems.append(f"{where}.{name}: offset {member.offset} size {member.size} in C, "
                                f"offset {f.offset} size {f.size} in Python")
    problems.extend(f"{where}.{name}: a C member Python does not mirror" for name in in_c if name not in mirrored)
    return problems


class CTypeRef(Protocol):
    """A map key's or value's C type (cilia.bpf.btf.TypeRef has this shape)."""

    @property
    def kind(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...


def _describe(side: CStruct | Scalar | CTypeRef | None) -> str:
    if side is None:
        return "none"
    if isinstance(side, CStruct):
        return f"struct {side.c_name} ({side.size} bytes)"
    if isinstance(side, Scalar):
        return f"{side.c_name} ({side.size} bytes)"
    return f"{side.kind} {side.name or '(anonymous)'} ({side.size} bytes)"


def map_side_mismatches(map_name: str, side: str, mirror: CStruct | Scalar | None, c: CTypeRef | None) -> list[str]:
    """A map's key or value: the struct Python mirrors must be the one the map definition names
    (a scalar must be no struct), of the same size."""
    where = f"map {map_name} {side}"
    if mirror is None or c is None:
        if mirror is None and c is None:
            return []
        return [f"{where}: {_describe(c)} in C, {_describe(mirror)} in Python"]
    problems: list[str] = []
    if isinstance(mirror, CStruct):
        if c.kind not in ("struct", "union") or c.name != mirror.c_name:
            problems.append(f"{where}: {_describe(c)} in C, Python mirrors {_describe(mirror)}")
    elif c.kind in ("struct", "union"):
        problems.append(f"{where}: {_describe(c)} in C, Python takes it for {_describe(mirror)}")
    if c.size != mirror.size:
        problems.append(f"{where}: {c.size} bytes in C, {mirror.size} in Python")
    return problems


def enum_mismatches(c_name: str, in_c: Mapping[str, int], in_python: Mapping[str, int],
                    c_only: Collection[str] = ()) -> list[str]:
    """A C enum against the Python table mirroring it, both as C enumerator name -> value.
    `c_only`: enumerators Python has no use for (each one named, so nothing goes unmirrored by accident)."""
    where = f"enum {c_name}"
    problems = [f"{where}: {name} = {value} in C, {in_python[name]} in Python"
                for name, value in in_c.items() if name in in_python and in_python[name] != value]
    problems.extend(f"{where}: {name} = {value} in C, missing in Python"
                    for name, value in in_c.items() if name not in in_python and name not in c_only)
    problems.extend(f"{where}: {name} = {value} in Python, no such enumerator in C"
                    for name, value in in_python.items() if name not in in_c)
    return problems
