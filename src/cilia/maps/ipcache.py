"""cilia_ipcache_v1: LPM trie from an IP prefix to its security identity and, for a prefix on another
node in tunnel mode, that node's underlay IPv4 (C: struct ipcache_key/value, enum ipcache_flags).

`FLAG_CLUSTER` marks the entries the cluster sync wrote (remote endpoints, other nodes), so a
restarted agent knows which entries are its own to remove and never touches a local pod's, the
host's or a CIDR identity's entry."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cilia.maps.addr import AF_INET, AF_INET6
from cilia.maps.layout import CStruct, MapLayout

if TYPE_CHECKING:  # a type only: the codecs import without libbpf
    from cilia.bpf import BpfMap

NAME = "cilia_ipcache_v1"
MAX_ENTRIES = 512000
KEY = CStruct("ipcache_key", ("prefixlen", "I"), ("family", "B"), ("pad", "3x"), ("addr", "16s"))
VALUE = CStruct("ipcache_value", ("identity", "I"), ("tunnel_endpoint", "I"), ("flags", "I"))
LAYOUTS = (MapLayout(NAME, KEY, VALUE),)
FLAG_CLUSTER = 1 << 0  # C: IPCACHE_F_CLUSTER, written by the cluster sync
# C: IPCACHE_F_NATIVE: a remote pod in native routing that is never masqueraded; its packets are
# forwarded by the pod's program itself (FIB lookup, redirect to the underlay: bpf/lib/fib.h)
FLAG_NATIVE = 1 << 1
FLAG_FQDN = 1 << 2  # C: IPCACHE_F_FQDN, written by the DNS proxy (cilia.proxy.dns)
_KEY = KEY.codec
_VALUE = VALUE.codec
Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class IpcacheValue:
    identity: int
    tunnel_endpoint: int = 0  # the owning node's underlay IPv4 in network order, as an int read little-endian
    flags: int = 0

    @classmethod
    def remote(cls, identity: int, tunnel_endpoint: ipaddress.IPv4Address | None,
               native: bool = False) -> IpcacheValue:
        """An entry the cluster sync writes: a remote endpoint or prefix, or another node; `native`:
        a remote pod the pods' programs forward to the underlay themselves (FLAG_NATIVE)."""
        endpoint = int.from_bytes(tunnel_endpoint.packed, "little") if tunnel_endpoint is not None else 0
        return cls(identity, endpoint, FLAG_CLUSTER | (FLAG_NATIVE if native else 0))

    @property
    def tunnel_address(self) -> ipaddress.IPv4Address | None:
        if not self.tunnel_endpoint:
            return None
        return ipaddress.IPv4Address(self.tunnel_endpoint.to_bytes(4, "little"))

    def pack(self) -> bytes:
        return _VALUE.pack(self.identity, self.tunnel_endpoint, self.flags)

    @classmethod
    def unpack(cls, raw: bytes) -> IpcacheValue:
        return cls(*_VALUE.unpack(raw[: _VALUE.size]))


def pack_key(prefix: Prefix) -> bytes:
    """The LPM prefix length counts the 32 bits of family + padding before the address."""
    family = AF_INET if prefix.version == 4 else AF_INET6
    address = prefix.network_address.packed.ljust(16, b"\0")
    return _KEY.pack(32 + prefix.prefixlen, family, address)


def pack_host_key(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """pack_key of the address's host prefix (/32, /128), without building the network."""
    family = AF_INET if address.version == 4 else AF_INET6
    return _KEY.pack(32 + address.max_prefixlen, family, address.packed.ljust(16, b"\0"))


def value_flags(raw: bytes) -> int:
    """The flags of a packed value (what IpcacheValue.unpack(raw).flags says), without the object."""
    return int(_VALUE.unpack_from(raw)[2])


VALUE_SIZE = _VALUE.size


def unpack_key(raw: bytes) -> Prefix:
    prefixlen, family, address = _KEY.unpack(raw)
    if family == AF_INET:
        return ipaddress.IPv4Network((address[:4], prefixlen - 32))
    return ipaddress.IPv6Network((address, prefixlen - 32))


class IpcacheMap:
    def __init__(self, bpf_map: BpfMap) -> None:
        self.map = bpf_map

    def upsert(self, prefix: Prefix, identity: int) -> None:
        self.map.update(pack_key(prefix), IpcacheValue(identity).pack())

    def put(self, prefix: Prefix, value: IpcacheValue) -> None:
        self.map.update(pack_key(prefix), value.pack())

    def delete(self, prefix: Prefix) -> bool:
        return self.map.delete(pack_key(prefix))

    def raw_items(self) -> Iterator[tuple[bytes, bytes]]:
        """The packed keys and values, walked (no dict of the whole map)."""
        return self.map.items()

    def put_raw(self, key: bytes, value: bytes) -> None:
        self.map.update(key, value)

    def delete_raw(self, key: bytes) -> bool:
        return self.map.delete(key)

    def entries(self) -> dict[Prefix, IpcacheValue]:
        return {unpack_key(k): IpcacheValue.unpack(v) for k, v in self.map.items()}

    def reconcile(self, desired: dict[Prefix, int]) -> int:
        """Make the map hold exactly `desired`; touches only entries that differ. Returns changes."""
        current = {prefix: value.identity for prefix, value in self.entries().items()}
        changes = 0
        for prefix, identity in desired.items():
            if current.get(prefix) != identity:
                self.upsert(prefix, identity)
                changes += 1
        for prefix in current.keys() - desired.keys():
            self.delete(prefix)
            changes += 1
        return changes
