"""Hand-made test packets for BPF_PROG_RUN: the addresses the kernel tests give their endpoints, the
Internet checksum, an Ethernet + IPv4/IPv6 + TCP builder with every checksum computed, and a parser
that reads an output packet back and says whether its checksums still verify."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

# tc verdicts (linux/pkt_cls.h) as BPF_PROG_RUN returns them.
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
# The tested endpoint (POD behind its host-side veth LXC) and a local peer endpoint (PEER).
POD_MAC, LXC_MAC = "02:00:00:00:00:02", "02:00:00:00:00:01"
PEER_MAC, PEER_LXC_MAC = "02:00:00:00:00:04", "02:00:00:00:00:03"
POD, PEER = "10.200.1.2", "10.200.1.3"
POD6, PEER6 = "fd00:200:1::2", "fd00:200:1::3"
ROUTER, ROUTER6 = "10.200.1.1", "fd00:200:1::1"
WORLD = "198.51.100.10"  # a host outside the cluster
IPPROTO_TCP = 6
IPPROTO_UDP = 17

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def csum(data: bytes) -> int:
    """The Internet checksum (RFC 1071); 0 over data that carries a correct checksum."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(src: Address, dst: Address, length: int, protocol: int = IPPROTO_TCP) -> bytes:
    """The IPv4 or IPv6 pseudo header an L4 checksum covers."""
    if src.version == 4:
        return src.packed + dst.packed + struct.pack("!BBH", 0, protocol, length)
    return src.packed + dst.packed + struct.pack("!I3xB", length, protocol)


def tcp_packet(src: str, dst: str, sport: int, dport: int, flags: int = 0x02, seq: int = 1000,
               eth: tuple[str, str] = (LXC_MAC, POD_MAC)) -> bytes:
    """Ethernet + IPv4/IPv6 + TCP with every checksum computed (CHECKSUM_NONE, as BPF_PROG_RUN sees it).
    eth is (destination, source) MAC: by default a packet the pod sends to its veth."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 0x50, flags, 65535, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", csum(pseudo_header(s, d, len(tcp)) + tcp)) + tcp[18:]
    if s.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, IPPROTO_TCP, 0, s.packed, d.packed)
        ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
        ethertype = b"\x08\x00"
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), IPPROTO_TCP, 64, s.packed, d.packed)
        ethertype = b"\x86\xdd"
    return mac(eth[0]) + mac(eth[1]) + ethertype + ip + tcp


@dataclass(frozen=True)
class Parsed:
    src: Address
    dst: Address
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    ip_ok: bool
    tcp_ok: bool


def parse(packet: bytes) -> Parsed:
    """The addresses, ports and flags of an output TCP packet, and whether both checksums verify."""
    src: Address
    dst: Address
    if packet[12:14] == b"\x08\x00":
        ip, l4 = packet[14:34], packet[34:]
        src, dst = ipaddress.IPv4Address(ip[12:16]), ipaddress.IPv4Address(ip[16:20])
        ip_ok = csum(ip) == 0
    else:
        ip, l4 = packet[14:54], packet[54:]
        src, dst = ipaddress.IPv6Address(ip[8:24]), ipaddress.IPv6Address(ip[24:40])
        ip_ok = True  # IPv6 has no header checksum
    sport, dport, seq, ack, _off, flags = struct.unpack_from("!HHIIBB", l4)
    tcp_ok = csum(pseudo_header(src, dst, len(l4)) + l4) == 0
    return Parsed(src, dst, sport, dport, seq, ack, flags, ip_ok, tcp_ok)


def vxlan_frame(outer_src: str, outer_dst: str, port: int, vni: int, inner: bytes, sport: int = 50000,
                eth: tuple[str, str] = (LXC_MAC, POD_MAC)) -> bytes:
    """Ethernet + IPv4 + UDP to `port` + a VXLAN header with `vni` around the inner Ethernet frame: a
    tunnel packet as another node's kernel sends it (UDP checksum 0, as a VXLAN device sends it)."""
    payload = struct.pack("!II", 0x08000000, vni << 8) + inner
    udp = struct.pack("!HHHH", sport, port, 8 + len(payload), 0) + payload
    s, d = ipaddress.IPv4Address(outer_src), ipaddress.IPv4Address(outer_dst)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0x4000, 64, IPPROTO_UDP, 0, s.packed, d.packed)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return mac(eth[0]) + mac(eth[1]) + b"\x08\x00" + ip + udp
