"""cilia_ct_tcp_v1 / cilia_ct_any_v1: connection tracking (C: struct tuple / struct ct_entry)."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cilia.maps.addr import IPAddress, from_addr16
from cilia.maps.layout import CStruct, MapLayout

if TYPE_CHECKING:  # a type only: the codecs import without libbpf
    from cilia.bpf import BpfMap

TCP_NAME = "cilia_ct_tcp_v1"
ANY_NAME = "cilia_ct_any_v1"
# struct tuple: also the key of cilia_lb_conn_v1 (maps/lb.py)
TUPLE = CStruct("tuple", ("saddr", "16s"), ("daddr", "16s"), ("sport", "H"), ("dport", "H"), ("proto", "B"),
                ("family", "B"), ("pad", "H"))
ENTRY = CStruct("ct_entry", ("expires", "Q"), ("tx_packets", "Q"), ("tx_bytes", "Q"), ("rx_packets", "Q"),
                ("rx_bytes", "Q"), ("last_report", "I"), ("src_identity", "I"), ("tx_flags_seen", "B"),
                ("rx_flags_seen", "B"), ("tx_flags_report", "B"), ("rx_flags_report", "B"), ("closing", "B"),
                ("lb_flags", "B"), ("rev_nat_id", "H"))
LAYOUTS = (MapLayout(TCP_NAME, TUPLE, ENTRY), MapLayout(ANY_NAME, TUPLE, ENTRY))
_KEY = TUPLE.codec
_VALUE = ENTRY.codec
_TCP_ACK = 0x10


@dataclass(frozen=True)
class CtTuple:
    source: IPAddress
    destination: IPAddress
    source_port: int
    destination_port: int
    protocol: int

    @classmethod
    def unpack(cls, raw: bytes) -> CtTuple:
        saddr, daddr, sport, dport, proto, family, _pad = _KEY.unpack(raw)
        return cls(
            from_addr16(saddr, family),
            from_addr16(daddr, family),
            socket.ntohs(sport),
            socket.ntohs(dport),
            proto,
        )


@dataclass(frozen=True)
class CtEntry:
    expires: int
    tx_packets: int
    tx_bytes: int
    rx_packets: int
    rx_bytes: int
    last_report: int
    src_identity: int
    tx_flags_seen: int
    rx_flags_seen: int
    closing: bool
    rev_nat_id: int = 0  # a service connection (per-packet path): its frontend's rev-NAT id

    @classmethod
    def unpack(cls, raw: bytes) -> CtEntry:
        (expires, txp, txb, rxp, rxb, last, ident, txf, rxf, _txr, _rxr, closing, _lb_flags, rev_nat) = _VALUE.unpack(
            raw[: _VALUE.size]
        )
        return cls(expires, txp, txb, rxp, rxb, last, ident, txf, rxf, bool(closing), rev_nat)

    @property
    def state(self) -> str:
        if self.closing:
            return "closing"
        if self.tx_flags_seen & _TCP_ACK and self.rx_flags_seen & _TCP_ACK:
            return "established"
        return "new" if self.tx_flags_seen else "active"


class CtMap:
    """Both tables behind one accessor."""

    def __init__(self, tcp: BpfMap, other: BpfMap) -> None:
        self.tables = (tcp, other)

    def entries(self) -> list[tuple[CtTuple, CtEntry]]:
        return [(CtTuple.unpack(k), CtEntry.unpack(v)) for table in self.tables for k, v in table.items()]

    def gc(self, now: float | None = None) -> int:
        """Delete expired entries. Expiry is in seconds of CLOCK_MONOTONIC, like bpf_ktime_get_ns()."""
        current = int(now if now is not None else time.monotonic())
        removed = 0
        for table in self.tables:
            expired = [k for k, v in table.items() if CtEntry.unpack(v).expires < current]
            for key in expired:
                removed += table.delete(key)
        return removed
