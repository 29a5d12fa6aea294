"""The `l7` part of an L7 flow (cilia.flows.l7) -> Hubble's `flow.Layer7` (HTTP or DNS record).

Kept apart from `cilia.hubble.convert` (which calls `fill_layer7` for every flow that has an
`l7` key) so the datapath flows' hot path stays as it is. Field numbers are upstream's
(flow.proto: Layer7 type 1, latency_ns 2, dns 100, http 101), pinned by tests/unit/test_hubble_proto.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cilia.hubble.pb import flow_pb2

_L7_TYPES = {"REQUEST": flow_pb2.REQUEST, "RESPONSE": flow_pb2.RESPONSE, "SAMPLE": flow_pb2.SAMPLE}


def fill_layer7(l7: Mapping[str, Any], out: flow_pb2.Layer7) -> None:
    out.SetInParent()
    out.type = _L7_TYPES.get(str(l7.get("type", "")), flow_pb2.UNKNOWN_L7_TYPE)
    out.latency_ns = int(l7.get("latency_ns") or 0)
    if (http := l7.get("http")) is not None:
        target = out.http
        target.SetInParent()
        target.code = int(http.get("code") or 0)
        target.method = http.get("method", "")
        target.url = http.get("url", "")
        target.protocol = http.get("protocol", "")
        for header in http.get("headers") or []:
            target.headers.add(key=header.get("key", ""), value=header.get("value", ""))
    elif (dns := l7.get("dns")) is not None:
        record = out.dns
        record.SetInParent()
        record.query = dns.get("query", "")
        record.ips.extend(dns.get("ips") or [])
        record.ttl = int(dns.get("ttl") or 0)
        record.cnames.extend(dns.get("cnames") or [])
        record.observation_source = dns.get("observation_source", "")
        record.rcode = int(dns.get("rcode") or 0)
        record.qtypes.extend(dns.get("qtypes") or [])
        record.rrtypes.extend(dns.get("rrtypes") or [])
