"""BTF, read through libbpf: what the C compiler says the datapath's types look like.

Struct and union members with byte offsets and sizes (members of anonymous structs and unions
flattened into their parent, as C code names them), enum values, map definitions (key and value
types) and DATASEC variables. `BpfObject` patches `.rodata` by it; the datapath contract test
(tests/kernel/test_datapath_contract.py) compares every Python codec with it. Parsing an object
file's BTF needs no privileges: nothing here talks to the kernel.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from cilia.bpf import libbpf as lb
from cilia.bpf.errors import BpfError

_MODIFIERS = {lb.BTF_KIND_TYPEDEF, lb.BTF_KIND_VOLATILE, lb.BTF_KIND_CONST, 11, 18}  # + RESTRICT, TYPE_TAG
_KIND_NAMES = {lb.BTF_KIND_INT: "int", lb.BTF_KIND_PTR: "ptr", lb.BTF_KIND_ARRAY: "array",
               lb.BTF_KIND_STRUCT: "struct", lb.BTF_KIND_UNION: "union", lb.BTF_KIND_ENUM: "enum",
               lb.BTF_KIND_ENUM64: "enum"}


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # bytes from the start of the outermost named struct
    size: int  # bytes
    bitfield: bool = False  # a bitfield: offset and size are rounded, not exact


@dataclass(frozen=True)
class Composite:
    """A named struct or union."""

    name: str
    kind: str  # "struct" or "union"
    size: int
    members: tuple[Member, ...]

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)


@dataclass(frozen=True)
class TypeRef:
    """A type as a map key/value or variable uses it, typedefs and qualifiers resolved."""

    kind: str  # "struct", "union", "int", "enum", "array", "ptr", or "size" (a map's key_size/value_size)
    name: str  # the struct/union/enum/int name; "" when anonymous or only a size
    size: int


@dataclass(frozen=True)
class MapDef:
    """One map of the `.maps` section: what its key and value are (None: the map has none)."""

    name: str
    key: TypeRef | None
    value: TypeRef | None


@dataclass(frozen=True)
class Variable:
    name: str
    offset: int
    size: int
    type: TypeRef


class Btf:
    """The BTF of one object: parsed from an ELF file (owned) or borrowed from a libbpf object."""

    def __init__(self, handle: int, label: str, *, owned: bool) -> None:
        self._handle: int | None = handle
        self.label = label
        self._owned = owned

    @classmethod
    def from_elf(cls, path: str | os.PathLike[str]) -> Btf:
        path = Path(path)
        if not path.is_file():
            raise BpfError(f"BPF object {path} does not exist (run `make bpf`)", errno.ENOENT)
        handle = lb.lib.btf__parse_elf(os.fsencode(path), None)
        if not handle:
            raise BpfError(f"reading the BTF of {path} (built without -g?)", ctypes.get_errno() or errno.EINVAL)
        return cls(handle, path.name, owned=True)

    def close(self) -> None:
        if self._handle is not None and self._owned:
            lb.lib.btf__free(self._handle)
        self._handle = None

    def __enter__(self) -> Btf:
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.close()

    # --- raw access -----------------------------------------------------------------------------

    def _require(self) -> int:
        if self._handle is None:
            raise BpfError(f"BTF of {self.label} is closed")
        return self._handle

    def _type(self, type_id: int) -> Any:
        pointer = lb.lib.btf__type_by_id(self._require(), type_id)
        if not pointer:
            raise BpfError(f"{self.label}: no BTF type {type_id}", errno.ENOENT)
        return pointer.contents

    @staticmethod
    def _kind(t: Any) -> int:
        return int((t.info >> 24) & 0x1F)

    @staticmethod
    def _vlen(t: Any) -> int:
        return int(t.info & 0xFFFF)

    def _name(self, t: Any) -> str:
        raw = lb.lib.btf__name_by_offset(self._require(), t.name_off)
        return raw.decode() if raw else ""

    def _trailing(self, t: Any, item: type[ctypes.Structure]) -> Any:
        """The array of `item` records BTF stores right after a type's header."""
        return ctypes.cast(ctypes.addressof(t) + ctypes.sizeof(lb.BtfType), ctypes.POINTER(item))

    def _size(self, type_id: int) -> int:
        size = int(lb.lib.btf__resolve_size(self._require(), type_id))
        if size < 0:
            raise BpfError(f"{self.label}: cannot size BTF type {type_id}", -size)
        return size

    def _strip(self, type_id: int) -> int:
        """Follow typedefs and qualifiers to the type they name."""
        for _ in range(64):  # bounded: a chain of qualifiers is a handful long
            t = self._type(type_id)
            if self._kind(t) not in _MODIFIERS:
                return type_id
            type_id = int(t.size_or_type)
        raise BpfError(f"{self.label}: a typedef chain at BTF type {type_id} does not end")

    def _ids(self) -> range:
        return range(1, int(lb.lib.btf__type_cnt(self._require())))

    def ref(self, type_id: int) -> TypeRef:
        resolved = self._strip(type_id)
        t = self._type(resolved)
        return TypeRef(_KIND_NAMES.get(self._kind(t), str(self._kind(t))), self._name(t), self._size(resolved))

    # --- structs, unions, enums -----------------------------------------------------------------

    def _members(self, type_id: int, base: int) -> list[Member]:
        t = self._type(type_id)
        kind_flag = bool(t.info >> 31)
        members = self._trailing(t, lb.BtfMember)
        out: list[Member] = []
        for index in range(self._vlen(t)):
            m = members[index]
            bits = int(m.offset) & 0xFFFFFF if kind_flag else int(m.offset)
            bitfield_size = int(m.offset) >> 24 if kind_flag else 0
            offset = base + bits // 8
            name = self._name(m)
            member_type = self._strip(int(m.type))
            if not name and self._kind(self._type(member_type)) in (lb.BTF_KIND_STRUCT, lb.BTF_KIND_UNION):
                out.extend(self._members(member_type, offset))  # anonymous: C names its members directly
                continue
            bitfield = bitfield_size > 0 or bits % 8 != 0
            size = (bitfield_size + 7) // 8 if bitfield_size else self._size(int(m.type))
            out.append(Member(name, offset, size, bitfield))
        return out

    def composites(self) -> dict[str, Composite]:
        """Every named struct and union by name (struct and union names do not collide in our C)."""
        found: dict[str, Composite] = {}
        for type_id in self._ids():
            t = self._type(type_id)
            kind = self._kind(t)
            if kind not in (lb.BTF_KIND_STRUCT, lb.BTF_KIND_UNION):
                continue
            name = self._name(t)
            if name:
                found[name] = Composite(name, _KIND_NAMES[kind], int(t.size_or_type),
                                        tuple(self._members(type_id, 0)))
        return found

    def enums(self) -> dict[str, dict[str, int]]:
        """Every named enum: enumerator -> value."""
        found: dict[str, dict[str, int]] = {}
        for type_id in self._ids():
            t = self._type(type_id)
            kind = self._kind(t)
            name = self._name(t)
            if not name or kind not in (lb.BTF_KIND_ENUM, lb.BTF_KIND_ENUM64):
                continue
            values: dict[str, int] = {}
            signed = bool(t.info >> 31)  # kind_flag: the enum is signed
            if kind == lb.BTF_KIND_ENUM:
                entries = self._trailing(t, lb.BtfEnum)
                for index in range(self._vlen(t)):
                    value = int(entries[index].val)
                    values[self._name(entries[index])] = value if signed or value >= 0 else value & 0xFFFFFFFF
            else:
                entries64 = self._trailing(t, lb.BtfEnum64)
                for index in range(self._vlen(t)):
                    e = entries64[index]
                    value = int(e.val_hi32) << 32 | int(e.val_lo32)
                    values[self._name(e)] = value - (1 << 64) if signed and value >> 63 else value
            found[name] = values
        return found

    # --- sections: variables and map definitions ------------------------------------------------

    def datasec(self, section: str) -> dict[str, Variable]:
        """The variables of a DATASEC (`.rodata`, `.maps`, ...) by name; empty when there is none.
        Offsets are final only in an object libbpf opened: in the ELF file they are still 0."""
        datasec_id = lb.lib.btf__find_by_name_kind(self._require(), section.encode(), lb.BTF_KIND_DATASEC)
        if datasec_id < 0:
            return {}
        datasec = self._type(datasec_id)
        secinfos = self._trailing(datasec, lb.BtfVarSecinfo)
        found: dict[str, Variable] = {}
        for index in range(self._vlen(datasec)):
            info = secinfos[index]
            var = self._type(int(info.type))
            name = self._name(var)
            if name:
                found[name] = Variable(name, int(info.offset), int(info.size), self.ref(int(var.size_or_type)))
        return found

    def maps(self) -> dict[str, MapDef]:
        """The `.maps` definitions: `__type(key, T)` is a pointer to T, `__uint(key_size, N)` a
        pointer to an array of N (libbpf's encoding, bpf_helpers.h)."""
        datasec_id = lb.lib.btf__find_by_name_kind(self._require(), b".maps", lb.BTF_KIND_DATASEC)
        if datasec_id < 0:
            return {}
        datasec = self._type(datasec_id)
        secinfos = self._trailing(datasec, lb.BtfVarSecinfo)
        found: dict[str, MapDef] = {}
        for index in range(self._vlen(datasec)):
            var = self._type(int(secinfos[index].type))
            name = self._name(var)
            definition = self._strip(int(var.size_or_type))
            fields = self._member_types(definition)
            found[name] = MapDef(name, self._map_side(fields, "key"), self._map_side(fields, "value"))
        return found

    def _member_types(self, type_id: int) -> dict[str, int]:
        t = self._type(type_id)
        members = self._trailing(t, lb.BtfMember)
        return {self._name(members[index]): int(members[index].type) for index in range(self._vlen(t))}

    def _map_side(self, fields: dict[str, int], side: str) -> TypeRef | None:
        if side in fields:  # __type(side, T): T *side
            pointer = self._type(self._strip(fields[side]))
            return self.ref(int(pointer.size_or_type))
        if f"{side}_size" in fields:  # __uint(side_size, N): int (*side_size)[N]
            pointer = self._type(self._strip(fields[f"{side}_size"]))
            array = self._type(self._strip(int(pointer.size_or_type)))
            return TypeRef("size", "", int(self._trailing(array, lb.BtfArray)[0].nelems))
        return None
