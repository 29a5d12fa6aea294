"""cilia_endpoints_v1: local pod address -> delivery info (C: struct endpoint_key/endpoint_info)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cilia.maps.addr import IPAddress, addr16, family_of, from_addr16, mac_bytes, mac_str
from cilia.maps.layout import CStruct, MapLayout

if TYPE_CHECKING:  # a type only: the codecs import without libbpf
    from cilia.bpf import BpfMap

NAME = "cilia_endpoints_v1"
KEY = CStruct("endpoint_key", ("family", "B"), ("pad", "3x"), ("addr", "16s"))
VALUE = CStruct("endpoint_info", ("ifindex", "I"), ("endpoint_id", "H"), ("flags", "H"), ("mac", "6s"),
                ("lxc_mac", "6s"), ("identity", "I"))
LAYOUTS = (MapLayout(NAME, KEY, VALUE),)
_KEY = KEY.codec
_VALUE = VALUE.codec


@dataclass(frozen=True)
class EndpointInfo:
    ifindex: int
    endpoint_id: int
    mac: str
    lxc_mac: str
    identity: int
    flags: int = 0

    def pack(self) -> bytes:
        return _VALUE.pack(
            self.ifindex, self.endpoint_id, self.flags, mac_bytes(self.mac), mac_bytes(self.lxc_mac), self.identity
        )

    @classmethod
    def unpack(cls, raw: bytes) -> EndpointInfo:
        ifindex, endpoint_id, flags, mac, lxc_mac, identity = _VALUE.unpack(raw[: _VALUE.size])
        return cls(ifindex, endpoint_id, mac_str(mac), mac_str(lxc_mac), identity, flags)


def pack_key(address: IPAddress) -> bytes:
    return _KEY.pack(family_of(address), addr16(address))


def unpack_key(raw: bytes) -> IPAddress:
    family, address = _KEY.unpack(raw)
    return from_addr16(address, family)


class EndpointsMap:
    def __init__(self, bpf_map: BpfMap) -> None:
        self.map = bpf_map

    def upsert(self, address: IPAddress, info: EndpointInfo) -> None:
        self.map.update(pack_key(address), info.pack())

    def delete(self, address: IPAddress) -> bool:
        return self.map.delete(pack_key(address))

    def lookup(self, address: IPAddress) -> EndpointInfo | None:
        raw = self.map.lookup(pack_key(address))
        return None if raw is None else EndpointInfo.unpack(raw)

    def entries(self) -> dict[IPAddress, EndpointInfo]:
        return {unpack_key(k): EndpointInfo.unpack(v) for k, v in self.map.items()}
