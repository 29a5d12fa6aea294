"""Hubble's `port-distribution` metric (cilium pkg/hubble/metrics/port-distribution):
`hubble_port_distribution_total{protocol,port}`, the destination ports of forwarded requests.

As upstream, a flow counts when its verdict is FORWARDED or REDIRECTED, it has an L4 header, and
it is known not to be a reply (`is_reply` set and false: a flow whose direction the datapath did
not know is skipped, so a reply's ephemeral port is never counted). `protocol` is `TCP`, `UDP`,
`SCTP` with the destination port, or `ICMPv4` / `ICMPv6` (and `VRRP`, `IGMP`) with port `0`.
(Upstream's newest handler increments ICMPv6 twice per flow, a copy-paste slip; cilia counts it
once.)"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_MESSAGE_TYPE_DROP = 1
_MESSAGE_TYPE_TRACE = 4


def is_reply(flow: Mapping[str, Any]) -> bool | None:
    """The flow's `is_reply` as `cilia.hubble.convert` puts it on the wire: None when unset there
    (no conntrack verdict on a trace, a drop not known to be a reply)."""
    if "is_reply" not in flow:
        return None
    kind = int((flow.get("event_type") or {}).get("type", 0))
    if kind == _MESSAGE_TYPE_TRACE and flow.get("trace_reason", "") == "TRACE_REASON_UNKNOWN":
        return None
    if kind == _MESSAGE_TYPE_DROP and not flow["is_reply"]:
        return None
    return bool(flow["is_reply"])


@dataclass(frozen=True)
class PortDistributionHandler:
    name: str = "port-distribution"
    metric: str = "hubble_port_distribution"
    help: str = "Numbers of packets distributed by destination port"
    labels: tuple[str, ...] = ("protocol", "port")

    def series(self, flow: Mapping[str, Any]) -> list[tuple[str, ...]]:
        l4 = flow.get("l4")
        if flow.get("verdict") not in ("FORWARDED", "REDIRECTED") or not l4 or is_reply(flow) is not False:
            return []
        out: list[tuple[str, ...]] = []
        for protocol in ("TCP", "UDP", "SCTP"):
            ports = l4.get(protocol)
            if ports is not None:
                out.append((protocol, str(int(ports.get("destination_port") or 0))))
        out.extend((protocol, "0") for protocol in ("ICMPv4", "ICMPv6", "VRRP", "IGMP") if protocol in l4)
        return out
