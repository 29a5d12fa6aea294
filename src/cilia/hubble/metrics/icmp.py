"""Hubble's `icmp` metric (cilium pkg/hubble/metrics/icmp): `hubble_icmp_total{family,type}`,
one count per flow that carries an ICMPv4 or ICMPv6 header, whatever its verdict or event type.

`family` is `IPv4` / `IPv6` (upstream labelled ICMPv6 `IPv4` until cilium#41427, fixed in 1.19);
`type` is the message as gopacket's ICMPv4TypeCode / ICMPv6TypeCode String() names it, which
upstream uses: `EchoRequest`, `DestinationUnreachable(Port)`, `TimeExceeded(TTLExceeded)`, a
code a type does not use as `EchoRequest(Code: 3)`, an unknown type as `42(0)`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# gopacket's tables (layers/icmp4.go, icmp6.go): type -> (name, {code: name} or None when the
# type does not use its code).
_ICMP4: dict[int, tuple[str, dict[int, str] | None]] = {
    0: ("EchoReply", None),
    3: ("DestinationUnreachable", {
        0: "Net", 1: "Host", 2: "Protocol", 3: "Port", 4: "FragmentationNeeded", 5: "SourceRoutingFailed",
        6: "NetUnknown", 7: "HostUnknown", 8: "SourceIsolated", 9: "NetAdminProhibited",
        10: "HostAdminProhibited", 11: "NetTOS", 12: "HostTOS", 13: "CommAdminProhibited",
        14: "HostPrecedence", 15: "PrecedenceCutoff"}),
    4: ("SourceQuench", None),
    5: ("Redirect", {0: "Net", 1: "Host", 2: "TOS+Net", 3: "TOS+Host"}),
    8: ("EchoRequest", None),
    9: ("RouterAdvertisement", None),
    10: ("RouterSolicitation", None),
    11: ("TimeExceeded", {0: "TTLExceeded", 1: "FragmentReassemblyTimeExceeded"}),
    12: ("ParameterProblem", {0: "PointerIndicatesError", 1: "MissingOption", 2: "BadLength"}),
    13: ("TimestampRequest", None),
    14: ("TimestampReply", None),
    15: ("InfoRequest", None),
    16: ("InfoReply", None),
    17: ("AddressMaskRequest", None),
    18: ("AddressMaskReply", None),
}
_ICMP6: dict[int, tuple[str, dict[int, str] | None]] = {
    1: ("DestinationUnreachable", {
        0: "NoRouteToDst", 1: "AdminProhibited", 2: "BeyondScopeOfSrc", 3: "AddressUnreachable",
        4: "PortUnreachable", 5: "SrcAddressFailedPolicy", 6: "RejectRouteToDst"}),
    2: ("PacketTooBig", None),
    3: ("TimeExceeded", {0: "HopLimitExceeded", 1: "FragmentReassemblyTimeExceeded"}),
    4: ("ParameterProblem", {0: "ErroneousHeaderField", 1: "UnrecognizedNextHeader", 2: "UnrecognizedIPv6Option"}),
    128: ("EchoRequest", None),
    129: ("EchoReply", None),
    133: ("RouterSolicitation", None),
    134: ("RouterAdvertisement", None),
    135: ("NeighborSolicitation", None),
    136: ("NeighborAdvertisement", None),
    137: ("Redirect", None),
}


def type_code_name(family: str, icmp_type: int, code: int) -> str:
    """gopacket's String() of an ICMP type/code pair (`family` "IPv4" or "IPv6")."""
    table = _ICMP4 if family == "IPv4" else _ICMP6
    known = table.get(icmp_type)
    if known is None:
        return f"{icmp_type}({code})"
    name, codes = known
    if codes is None:
        return name if code == 0 else f"{name}(Code: {code})"
    code_name = codes.get(code)
    return f"{name}({code_name})" if code_name is not None else f"{name}(Code: {code})"


@dataclass(frozen=True)
class IcmpHandler:
    name: str = "icmp"
    metric: str = "hubble_icmp"
    help: str = "Number of ICMP messages"
    labels: tuple[str, ...] = ("family", "type")

    def series(self, flow: Mapping[str, Any]) -> list[tuple[str, ...]]:
        l4 = flow.get("l4") or {}
        out: list[tuple[str, ...]] = []
        for protocol, family in (("ICMPv4", "IPv4"), ("ICMPv6", "IPv6")):
            icmp = l4.get(protocol)
            if icmp is not None:
                # uint8 on upstream's side: the proto's uint32 is truncated there
                out.append((family, type_code_name(family, int(icmp.get("type") or 0) & 0xFF,
                                                   int(icmp.get("code") or 0) & 0xFF)))
        return out
