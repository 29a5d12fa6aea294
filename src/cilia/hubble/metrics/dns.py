"""Hubble's `dns` metric (cilium pkg/hubble/metrics/dns), on L7 DNS flows:
`hubble_dns_queries_total{rcode,qtypes,ips_returned}` per query (rcode "" for a query,
"Policy denied" for one the proxy refused), `hubble_dns_responses_total{rcode,qtypes,ips_returned}`
per answer (rcode by name: "No Error", "Non-Existent Domain", ...) and
`hubble_dns_response_types_total{type,qtypes}` per answer record type. Options as upstream:
`query` adds a `query` label to all three, `ignoreAAAA` skips flows whose only qtype is AAAA."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from cilia.flows.l7 import rcode_name
from cilia.hubble.metrics.families import Family, MultiHandler, Sample

_HELP = "Number of DNS queries observed"  # upstream's help text, the same for all three


@dataclass(frozen=True)
class DnsHandler:
    name: str = "dns"
    include_query: bool = False
    ignore_aaaa: bool = False
    invert_context: bool = False

    @property
    def families(self) -> tuple[Family, ...]:
        query = ("query",) if self.include_query else ()
        return (Family("hubble_dns_queries", _HELP, ("rcode", "qtypes", "ips_returned", *query)),
                Family("hubble_dns_responses", _HELP, ("rcode", "qtypes", "ips_returned", *query)),
                Family("hubble_dns_response_types", _HELP, ("type", "qtypes", *query)))

    def configure(self, flags: frozenset[str]) -> MultiHandler:
        return replace(self, include_query="query" in flags, ignore_aaaa="ignoreAAAA" in flags)

    def samples(self, flow: Mapping[str, Any]) -> list[Sample]:
        dns = (flow.get("l7") or {}).get("dns")
        if dns is None:
            return []
        qtypes_list = list(dns.get("qtypes") or [])
        if self.ignore_aaaa and qtypes_list == ["AAAA"]:
            return []
        qtypes = ",".join(qtypes_list)
        ips = str(len(dns.get("ips") or []))
        query: tuple[str, ...] = (str(dns.get("query", "")),) if self.include_query else ()
        if flow.get("verdict") == "DROPPED":
            return [(0, ("Policy denied", qtypes, ips, *query), 1.0)]
        if not flow.get("is_reply"):
            return [(0, ("", qtypes, ips, *query), 1.0)]
        out: list[Sample] = [(1, (rcode_name_metric(int(dns.get("rcode") or 0)), qtypes, ips, *query), 1.0)]
        out.extend((2, (str(rrtype), qtypes, *query), 1.0) for rrtype in dns.get("rrtypes") or [])
        return out


def rcode_name_metric(rcode: int) -> str:
    """Upstream's metric table: an rcode it does not name is an empty label."""
    name = rcode_name(rcode)
    return "" if name == "Unknown error" else name
