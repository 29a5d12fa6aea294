"""Decodes the datapath's ring-buffer records (layout in bpf/lib/events.h) into typed events.

Pure Python: the packet headers captured with each event are parsed here, not in BPF.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

EVENT_TRACE = 1
EVENT_DROP = 2
EVENT_POLICY_VERDICT = 3
EVENT_SOCK = 4  # bpf_sock.c: a socket-level service translation

_HEADER = struct.Struct("<QBBBBHHIIIIHHI")
HEADER_SIZE = _HEADER.size  # 40

OBSERVATION_POINTS = {1: "TO_ENDPOINT", 2: "TO_STACK", 3: "FROM_ENDPOINT", 4: "TO_HOST"}
CT_STATUS = {0: "", 1: "new", 2: "established", 3: "reply", 4: "related"}
DIRECTIONS = {1: "EGRESS", 2: "INGRESS"}
SOURCE_FILES = {1: "bpf_lxc.c", 2: "bpf_host.c", 3: "bpf_sock.c"}

# Mirrors bpf/lib/drop_reasons.h (tests/unit/test_events_decode.py checks they agree).
DROP_REASONS: dict[int, tuple[str, str]] = {
    130: ("INVALID_SOURCE_MAC", "Invalid source mac"),
    131: ("INVALID_DEST_MAC", "Invalid destination mac"),
    132: ("INVALID_SOURCE_IP", "Invalid source ip"),
    133: ("POLICY_DENIED", "Policy denied"),
    134: ("INVALID_PACKET", "Invalid packet"),
    135: ("CT_INVALID_HEADER", "CT: Invalid header"),
    137: ("UNKNOWN_L4", "Unknown L4 protocol"),
    139: ("UNSUPPORTED_L3", "Unsupported L3 protocol"),
    143: ("CT_MAP_INSERT_FAILED", "CT: Map insertion failed"),
    154: ("UNSUPPORTED_L2", "Unsupported L2 protocol"),
    158: ("NO_SERVICE", "Service backend not found"),
    164: ("TTL_EXCEEDED", "TTL exceeded"),
    165: ("NO_ENDPOINT", "No local endpoint"),
    181: ("POLICY_DENY", "Policy denied by denylist"),
    220: ("POLICY_NOT_INSTALLED", "Policy not installed (fail closed)"),
}
POLICY_DROP_REASONS = (133, 181, 220)
# Policy-verdict subtypes (bpf/lib/policy.h VERDICT_*); 0x80 marks a denied packet audit mode let through.
VERDICTS = {1: "allowed", 2: "denied", 3: "default-denied", 4: "not-installed"}
VERDICT_AUDIT_FLAG = 0x80


@dataclass(frozen=True)
class L4:
    protocol: str  # TCP, UDP, ICMPv4, ICMPv6, or the number
    source_port: int = 0
    destination_port: int = 0
    tcp_flags: frozenset[str] = frozenset()
    icmp_type: int | None = None
    icmp_code: int | None = None


@dataclass(frozen=True)
class Packet:
    eth_source: str = ""
    eth_destination: str = ""
    ip_version: int = 0
    source: str = ""
    destination: str = ""
    l4: L4 | None = None


@dataclass(frozen=True)
class MonitorEvent:
    type: int
    ktime_ns: int
    subtype: int
    source_file: str
    source_line: int
    ct_status: str
    endpoint_id: int
    ifindex: int
    src_identity: int
    dst_identity: int
    orig_len: int
    direction: str
    packet: Packet = field(default_factory=Packet)
    rule_id: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what `cilia monitor` prints for each event."""
        data = asdict(self)
        if self.packet.l4 is not None:
            data["packet"]["l4"]["tcp_flags"] = sorted(self.packet.l4.tcp_flags)
        data["type"] = {EVENT_TRACE: "trace", EVENT_DROP: "drop", EVENT_POLICY_VERDICT: "policy-verdict"}.get(
            self.type, str(self.type))
        data["observation_point"] = self.observation_point
        data["drop_reason_name"] = self.drop_reason_name
        if self.is_policy_verdict:
            data["verdict"] = self.policy_verdict
            data["audited"] = self.audited
        return data

    @property
    def is_policy_verdict(self) -> bool:
        return self.type == EVENT_POLICY_VERDICT

    @property
    def policy_verdict(self) -> str:
        return VERDICTS.get(self.subtype & ~VERDICT_AUDIT_FLAG, str(self.subtype)) if self.is_policy_verdict else ""

    @property
    def audited(self) -> bool:
        return self.is_policy_verdict and bool(self.subtype & VERDICT_AUDIT_FLAG)

    @property
    def is_policy_drop(self) -> bool:
        return self.is_drop and self.subtype in POLICY_DROP_REASONS

    @property
    def is_drop(self) -> bool:
        return self.type == EVENT_DROP

    @property
    def observation_point(self) -> str:
        if self.is_drop or self.is_policy_verdict:
            return ""
        return OBSERVATION_POINTS.get(self.subtype, "UNKNOWN_POINT")

    @property
    def drop_reason(self) -> int:
        return self.subtype if self.is_drop else 0

    @property
    def drop_reason_name(self) -> str:
        return DROP_REASONS.get(self.subtype, (f"UNKNOWN_{self.subtype}", ""))[0] if self.is_drop else ""

    @property
    def drop_reason_desc(self) -> str:
        return DROP_REASONS.get(self.subtype, ("", f"Unknown reason {self.subtype}"))[1] if self.is_drop else ""

    @property
    def is_reply(self) -> bool:
        return self.ct_status == "reply"


class DecodeError(ValueError):
    pass


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


_TCP_FLAG_NAMES = ((0x01, "FIN"), (0x02, "SYN"), (0x04, "RST"), (0x08, "PSH"), (0x10, "ACK"), (0x20, "URG"))


def _l4(protocol: int, data: bytes, v6: bool) -> L4:
    if protocol == 6 and len(data) >= 14:
        sport, dport = struct.unpack_from("!HH", data)
        flags = frozenset(name for bit, name in _TCP_FLAG_NAMES if data[13] & bit)
        return L4("TCP", sport, dport, flags)
    if protocol in (17, 132) and len(data) >= 4:
        sport, dport = struct.unpack_from("!HH", data)
        return L4("UDP" if protocol == 17 else "SCTP", sport, dport)
    if protocol in (1, 58) and len(data) >= 2:
        return L4("ICMPv6" if v6 else "ICMPv4", icmp_type=data[0], icmp_code=data[1])
    return L4(str(protocol))


def parse_packet(data: bytes) -> Packet:
    """Ethernet + IPv4/IPv6 + TCP/UDP/ICMP headers; whatever is missing stays empty."""
    if len(data) < 14:
        return Packet()
    eth_dst, eth_src = _mac(data[0:6]), _mac(data[6:12])
    ethertype = struct.unpack_from("!H", data, 12)[0]
    payload = data[14:]
    if ethertype == 0x0800 and len(payload) >= 20:
        ihl = (payload[0] & 0x0F) * 4
        return Packet(
            eth_src, eth_dst, 4,
            str(ipaddress.IPv4Address(payload[12:16])),
            str(ipaddress.IPv4Address(payload[16:20])),
            _l4(payload[9], payload[ihl:], False),
        )
    if ethertype == 0x86DD and len(payload) >= 40:
        return Packet(
            eth_src, eth_dst, 6,
            str(ipaddress.IPv6Address(payload[8:24])),
            str(ipaddress.IPv6Address(payload[24:40])),
            _l4(payload[6], payload[40:], True),
        )
    return Packet(eth_src, eth_dst)


def decode(record: bytes) -> MonitorEvent:
    if len(record) < HEADER_SIZE:
        raise DecodeError(f"event record of {len(record)} bytes is shorter than the {HEADER_SIZE}-byte header")
    (ktime, etype, subtype, file_id, ct_status, line, endpoint_id, ifindex, src_id, dst_id, orig_len, cap_len,
     flags, rule_id) = _HEADER.unpack_from(record)
    if etype not in (EVENT_TRACE, EVENT_DROP, EVENT_POLICY_VERDICT):
        raise DecodeError(f"unknown event type {etype}")
    data = record[HEADER_SIZE : HEADER_SIZE + cap_len]
    return MonitorEvent(
        type=etype,
        ktime_ns=ktime,
        subtype=subtype,
        source_file=SOURCE_FILES.get(file_id, f"file-{file_id}"),
        source_line=line,
        ct_status=CT_STATUS.get(ct_status, str(ct_status)),
        endpoint_id=endpoint_id,
        ifindex=ifindex,
        src_identity=src_id,
        dst_identity=dst_id,
        orig_len=orig_len,
        direction=DIRECTIONS.get(flags, "TRAFFIC_DIRECTION_UNKNOWN"),
        packet=parse_packet(data),
        rule_id=rule_id,
    )


_SOCK = struct.Struct("<QBBBBHHQQQ16s16s2s2sI8x")
SOCK_POINTS = {1: "SOCK_XLATE_POINT_PRE_DIRECTION_FWD"}


@dataclass(frozen=True)
class SockEvent:
    """bpf_sock.c's record: a connect/sendmsg to a service frontend was given a backend."""

    ktime_ns: int
    point: str
    protocol: str
    rev_nat_id: int
    socket_cookie: int
    netns_cookie: int
    cgroup_id: int
    frontend: str
    frontend_port: int
    backend: str
    backend_port: int
    backend_id: int

    def to_dict(self) -> dict[str, Any]:
        return {"type": "sock", **asdict(self)}


def event_type(record: bytes) -> int:
    return record[8] if len(record) > 8 else 0


def decode_sock(record: bytes) -> SockEvent:
    if len(record) < _SOCK.size:
        raise DecodeError(f"sock event of {len(record)} bytes is shorter than {_SOCK.size}")
    (ktime, _type, point, proto, family, rev_nat_id, _pad, cookie, netns, cgroup, frontend, backend, fport, bport,
     backend_id) = _SOCK.unpack_from(record)
    if family == 2:
        front, back = str(ipaddress.IPv4Address(frontend[12:16])), str(ipaddress.IPv4Address(backend[12:16]))
    else:
        front, back = str(ipaddress.IPv6Address(frontend)), str(ipaddress.IPv6Address(backend))
    return SockEvent(ktime, SOCK_POINTS.get(point, str(point)), {6: "TCP", 17: "UDP"}.get(proto, str(proto)),
                     rev_nat_id, cookie, netns, cgroup, front, int.from_bytes(fport, "big"), back,
                     int.from_bytes(bport, "big"), backend_id)
