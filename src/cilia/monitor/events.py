"""Decodes the datapath's ring-buffer records into typed events.

Records and their constant tables mirror bpf/lib/events.h (struct event: trace, drop, policy
verdict) and bpf/lib/sock_event.h (struct sock_event); every enum here carries its C enum's
names (tests/kernel/test_datapath_contract.py checks layouts and values against the objects' BTF).
Pure Python: the packet headers captured with each event are parsed here, not in BPF.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Any

from cilia import ipproto
from cilia.maps.direction import TrafficDirection
from cilia.maps.layout import CStruct


class EventType(IntEnum):
    """C: enum event_type."""

    TRACE = 1
    DROP = 2
    POLICY_VERDICT = 3
    SOCK = 4  # bpf_sock.c: a socket-level service translation


EVENT_TRACE = EventType.TRACE
EVENT_DROP = EventType.DROP
EVENT_POLICY_VERDICT = EventType.POLICY_VERDICT
EVENT_SOCK = EventType.SOCK

EVENT = CStruct("event", ("ktime", "Q"), ("type", "B"), ("subtype", "B"), ("file", "B"), ("ct_status", "B"),
                ("line", "H"), ("endpoint_id", "H"), ("ifindex", "I"), ("src_identity", "I"),
                ("dst_identity", "I"), ("orig_len", "I"), ("cap_len", "H"), ("direction", "H"),
                (("rule_id", "rev_nat_id"), "I"), ("data", "128s"))
_HEADER = EVENT.head("data")
HEADER_SIZE = _HEADER.size  # 40


class ObsPoint(IntEnum):
    """Where a trace event saw the packet (its subtype). C: enum obs_point."""

    TO_ENDPOINT = 1
    TO_STACK = 2
    FROM_ENDPOINT = 3
    TO_HOST = 4
    TO_OVERLAY = 5
    FROM_OVERLAY = 6
    FROM_NETWORK = 7
    TO_NETWORK = 8


class CtStatus(IntEnum):
    """C: enum ct_status; 0 means the packet was not looked up."""

    NEW = 1
    ESTABLISHED = 2
    REPLY = 3
    RELATED = 4


class SourceFile(IntEnum):
    """The program file that sent an event. C: enum source_file."""

    LXC = 1
    HOST = 2
    SOCK = 3
    OVERLAY = 4


OBSERVATION_POINTS = {int(p): p.name for p in ObsPoint}
CT_STATUS = {0: "", **{int(s): s.name.lower() for s in CtStatus}}
SOURCE_FILES = {int(f): f"bpf_{f.name.lower()}.c" for f in SourceFile}


class DropReason(IntEnum):
    """C: enum drop_reason (the DROP_ names; REASON_FORWARDED is 0)."""

    INVALID_SOURCE_MAC = 130
    INVALID_DEST_MAC = 131
    INVALID_SOURCE_IP = 132
    POLICY_DENIED = 133
    INVALID_PACKET = 134
    CT_INVALID_HEADER = 135
    UNKNOWN_L4 = 137
    UNSUPPORTED_L3 = 139
    CT_MAP_INSERT_FAILED = 143
    UNSUPPORTED_L2 = 154
    NO_TUNNEL_KEY = 147
    NO_SERVICE = 158
    TTL_EXCEEDED = 164
    NO_ENDPOINT = 165
    INVALID_IDENTITY = 171
    UNKNOWN_SENDER = 172
    POLICY_DENY = 181
    POLICY_NOT_INSTALLED = 220
    PROXY_UNAVAILABLE = 221


REASON_FORWARDED = 0  # the metrics map's reason for forwarded packets
_DROP_DESCRIPTIONS = {
    DropReason.INVALID_SOURCE_MAC: "Invalid source mac",
    DropReason.INVALID_DEST_MAC: "Invalid destination mac",
    DropReason.INVALID_SOURCE_IP: "Invalid source ip",
    DropReason.POLICY_DENIED: "Policy denied",
    DropReason.INVALID_PACKET: "Invalid packet",
    DropReason.CT_INVALID_HEADER: "CT: Invalid header",
    DropReason.UNKNOWN_L4: "Unknown L4 protocol",
    DropReason.UNSUPPORTED_L3: "Unsupported L3 protocol",
    DropReason.CT_MAP_INSERT_FAILED: "CT: Map insertion failed",
    DropReason.UNSUPPORTED_L2: "Unsupported L2 protocol",
    DropReason.NO_TUNNEL_KEY: "Error retrieving tunnel key",
    DropReason.NO_SERVICE: "Service backend not found",
    DropReason.TTL_EXCEEDED: "TTL exceeded",
    DropReason.NO_ENDPOINT: "No local endpoint",
    DropReason.INVALID_IDENTITY: "Invalid identity",
    DropReason.UNKNOWN_SENDER: "Unknown sender",
    DropReason.POLICY_DENY: "Policy denied by denylist",
    DropReason.POLICY_NOT_INSTALLED: "Policy not installed (fail closed)",
    DropReason.PROXY_UNAVAILABLE: "proxy unavailable",
}
DROP_REASONS: dict[int, tuple[str, str]] = {int(r): (r.name, _DROP_DESCRIPTIONS[r]) for r in DropReason}
POLICY_DROP_REASONS = (DropReason.POLICY_DENIED, DropReason.POLICY_DENY, DropReason.POLICY_NOT_INSTALLED)


class PolicyVerdict(IntEnum):
    """A policy-verdict event's subtype. C: enum policy_verdict (bpf/lib/policy.h)."""

    ALLOW = 1
    DENY = 2
    DEFAULT_DENY = 3
    NOT_INSTALLED = 4
    REDIRECT = 5  # a policy map value only (allowed through the L7 proxy); events say ALLOW
    REDIRECT_DNS = 6  # a policy map value only (allowed through the DNS proxy); events say ALLOW


VERDICTS: dict[int, str] = {PolicyVerdict.ALLOW: "allowed", PolicyVerdict.DENY: "denied",
                             PolicyVerdict.DEFAULT_DENY: "default-denied", PolicyVerdict.NOT_INSTALLED: "not-installed"}
VERDICT_AUDIT_FLAG = 0x80  # set in the subtype when audit mode let a denied packet through


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


_TYPE_NAMES: dict[int, str] = {EVENT_TRACE: "trace", EVENT_DROP: "drop", EVENT_POLICY_VERDICT: "policy-verdict"}


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
    # The record's one slot for these, named by the event type (C: a union in struct event):
    rule_id: int = 0  # drop, policy verdict: the policy entry that decided (0: default deny / none)
    rev_nat_id: int = 0  # trace: the service frontend the packet was translated from or to (0: none)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what `cilia monitor` prints for each event."""
        data = asdict(self)
        if self.packet.l4 is not None:
            data["packet"]["l4"]["tcp_flags"] = sorted(self.packet.l4.tcp_flags)
        data["type"] = _TYPE_NAMES.get(self.type, str(self.type))
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
    return raw.hex(":")


_TCP_FLAG_NAMES = ((0x01, "FIN"), (0x02, "SYN"), (0x04, "RST"), (0x08, "PSH"), (0x10, "ACK"), (0x20, "URG"))
_TCP_FLAG_SETS = [frozenset(name for bit, name in _TCP_FLAG_NAMES if bits & bit) for bits in range(64)]
_DIRECTIONS = {int(d): d.name for d in TrafficDirection}
_ADDRESSES: dict[bytes, str] = {}  # packed address -> text: a flow's addresses repeat, ipaddress is slow


def _address(raw: bytes) -> str:
    text = _ADDRESSES.get(raw)
    if text is None:
        if len(_ADDRESSES) >= 8192:
            _ADDRESSES.clear()
        ip = ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)
        text = _ADDRESSES[raw] = str(ip)
    return text


def _l4(protocol: int, data: bytes, v6: bool) -> L4:
    if protocol == ipproto.TCP and len(data) >= 14:
        sport, dport = struct.unpack_from("!HH", data)
        return L4(ipproto.name_of(protocol), sport, dport, _TCP_FLAG_SETS[data[13] & 0x3F])
    if protocol in (ipproto.UDP, ipproto.SCTP) and len(data) >= 4:
        sport, dport = struct.unpack_from("!HH", data)
        return L4(ipproto.name_of(protocol), sport, dport)
    if protocol in (ipproto.ICMP, ipproto.ICMPV6) and len(data) >= 2:
        # flows name ICMP by the packet's IP version (Hubble's ICMPv4 / ICMPv6), whatever the number says
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
            _address(payload[12:16]),
            _address(payload[16:20]),
            _l4(payload[9], payload[ihl:], False),
        )
    if ethertype == 0x86DD and len(payload) >= 40:
        return Packet(
            eth_src, eth_dst, 6,
            _address(payload[8:24]),
            _address(payload[24:40]),
            _l4(payload[6], payload[40:], True),
        )
    return Packet(eth_src, eth_dst)


def decode(record: bytes) -> MonitorEvent:
    if len(record) < HEADER_SIZE:
        raise DecodeError(f"event record of {len(record)} bytes is shorter than the {HEADER_SIZE}-byte header")
    (ktime, etype, subtype, file_id, ct_status, line, endpoint_id, ifindex, src_id, dst_id, orig_len, cap_len,
     direction, slot) = _HEADER.unpack_from(record)
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
        direction=_DIRECTIONS.get(direction, "TRAFFIC_DIRECTION_UNKNOWN"),  # TrafficDirection.name_of's
        packet=parse_packet(data),
        rule_id=0 if etype == EVENT_TRACE else slot,
        rev_nat_id=slot if etype == EVENT_TRACE else 0,
    )


SOCK_EVENT = CStruct("sock_event", ("ktime", "Q"), ("type", "B"), ("point", "B"), ("proto", "B"), ("family", "B"),
                     ("rev_nat_id", "H"), ("pad", "H"), ("cookie", "Q"), ("netns", "Q"), ("cgroup", "Q"),
                     ("frontend", "16s"), ("backend", "16s"), ("frontend_port", "2s"), ("backend_port", "2s"),
                     ("backend_id", "I"), ("pad2", "8x"))
_SOCK = SOCK_EVENT.codec


class SockXlatePoint(IntEnum):
    """The hook that translated. C: enum sock_xlate_point."""

    FWD = 1  # connect / sendmsg: frontend -> backend


SOCK_POINTS: dict[int, str] = {SockXlatePoint.FWD: "SOCK_XLATE_POINT_PRE_DIRECTION_FWD"}  # Hubble's names


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
    return SockEvent(ktime, SOCK_POINTS.get(point, str(point)), ipproto.name_of(proto),
                     rev_nat_id, cookie, netns, cgroup, front, int.from_bytes(fport, "big"), back,
                     int.from_bytes(bport, "big"), backend_id)
