"""Proxy access-log records -> L7 flows (Hubble's `Type: L7` flows, `-o json` field names).

A record is one proxied HTTP request or response, or DNS query or answer, as the node's proxies
judged it (`cilia.proxy.accesslog.AccessRecord`). The flow carries what Hubble's L7 parser
(cilium pkg/hubble/parser/seven) puts in one: event type 129 (the monitor API's access-log
message), `l7` with the request/response type, latency and the HTTP or DNS record (a request
carries no status code and no answer), the verdict, the direction the deciding rule was on
(`ingress` -> INGRESS), `is_reply` (false for a request, true for a response), both endpoints
resolved like the datapath's flows (a local pod by address, else the identity's labels; a
response goes server -> client, the record's two ends swapped, as Cilium does for its proxies'
responses), the policies that decided, and Hubble's summary line
("HTTP/1.1 GET http://deathstar/v1/", "DNS Answer \"1.2.3.4\" TTL: 30 (Proxy api.example.test. A)")."""

from __future__ import annotations

import ipaddress
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from cilia.flows.build import EndpointLookup, EndpointView, Flow, IdentityLookup, RuleLookup
from cilia.proxy.accesslog import AccessRecord, DnsRecord, HttpRecord

MESSAGE_TYPE_ACCESS_LOG = 129  # monitor API: MessageTypeAccessLog, Hubble's event type of L7 flows

# DNS rcodes by name, as Hubble names them (its dns metric's table; gopacket's for summaries).
RCODE_NAMES: dict[int, str] = {
    0: "No Error", 1: "Format Error", 2: "Server Failure", 3: "Non-Existent Domain", 4: "Not Implemented",
    5: "Query Refused", 6: "Name Exists when it should not", 7: "RR Set Exists when it should not",
    8: "RR Set that should exist does not", 9: "Not Authorized", 10: "Name not contained in zone",
    11: "DSO-TYPE Not Implemented", 16: "Bad OPT Version", 17: "Key not recognized",
    18: "Signature out of time window", 19: "Bad TKEY Mode", 20: "Duplicate key name",
    21: "Algorithm not supported", 22: "Bad Truncation", 23: "Bad/missing Server Cookie",
}


def rcode_name(rcode: int) -> str:
    return RCODE_NAMES.get(rcode, "Unknown error")


def canonical_header(name: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey, the form Hubble's records carry header names in
    ("x-request-id" -> "X-Request-Id"); a name with a character outside a token stays as it is."""
    if not name or any(c in " :\t\r\n" for c in name):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


class L7FlowBuilder:
    """Access records -> flows; the lookups are the event pump's (endpoints by IP, identity labels)
    and the policy engine's (rule id -> policy)."""

    def __init__(self, node_name: str, endpoints: EndpointLookup, identities: IdentityLookup,
                 rules: RuleLookup | None = None) -> None:
        self.node_name = node_name
        self._endpoints = endpoints
        self._identities = identities
        self._rules: RuleLookup = rules or (lambda _rule_id: None)

    def _endpoint(self, ip: str, identity: int) -> dict[str, Any]:
        view = self._endpoints(ip) if ip else None
        if view is not None and (not identity or view.identity == identity):
            return _view(view)
        return {"identity": identity, "labels": sorted(self._identities(identity)) if identity else []}

    def build(self, record: AccessRecord) -> Flow:
        when = datetime.fromtimestamp(record.time_ns / 1e9, tz=UTC)
        # A record names the client as source and the server as destination; a response flows
        # server -> client (Cilium swaps the two for its proxies' response records too).
        client = (record.source_ip, record.source_port, record.source_identity)
        server = (record.destination_ip, record.destination_port, record.destination_identity)
        (sip, sport, sid), (dip, dport, did) = (server, client) if record.type == "RESPONSE" else (client, server)
        flow: Flow = {
            "time": when.isoformat().replace("+00:00", "Z"),
            "uuid": str(uuid.uuid4()),
            "verdict": record.verdict,
            "IP": _ip(sip, dip),
            "l4": {record.protocol: {"source_port": sport, "destination_port": dport}},
            "source": self._endpoint(sip, sid),
            "destination": self._endpoint(dip, did),
            "Type": "L7",
            "node_name": self.node_name,
            "event_type": {"type": MESSAGE_TYPE_ACCESS_LOG},
            "traffic_direction": "INGRESS" if record.ingress else "EGRESS",
            "is_reply": record.type == "RESPONSE",
            "l7": _layer7(record),
        }
        policies = self._policies(record)
        if policies:
            side = "ingress" if record.ingress else "egress"
            outcome = "allowed" if record.verdict == "FORWARDED" else "denied"
            flow[f"{side}_{outcome}_by"] = policies
        flow["Summary"] = record.summary or summary(record)
        return flow

    def _policies(self, record: AccessRecord) -> list[dict[str, Any]]:
        policies = [{"kind": p.kind, "namespace": p.namespace, "name": p.name} for p in record.policies]
        if not policies and record.rule_id:
            rule = self._rules(record.rule_id)
            if rule is not None:
                policies.append(rule)
        return policies


def _view(view: EndpointView) -> dict[str, Any]:
    return {"ID": view.id, "identity": view.identity, "namespace": view.namespace,
            "labels": sorted(view.labels), "pod_name": view.pod_name}


def _ip(source: str, destination: str) -> dict[str, Any]:
    try:
        version = ipaddress.ip_address(destination or source).version
    except ValueError:
        return {"source": source, "destination": destination}
    return {"source": source, "destination": destination, "ipVersion": f"IPv{version}"}


def _layer7(record: AccessRecord) -> dict[str, Any]:
    l7: dict[str, Any] = {"type": record.type, "latency_ns": record.latency_ns}
    if record.http is not None:
        l7["http"] = _http(record.type, record.http)
    elif record.dns is not None:
        l7["dns"] = _dns(record.type, record.dns)
    return l7


def _http(kind: str, http: HttpRecord) -> dict[str, Any]:
    # Hubble: headers sorted by (canonical) name, each name's values in order; a request has no code.
    headers = sorted(((canonical_header(k), v) for k, v in http.headers), key=lambda kv: kv[0])
    out: dict[str, Any] = {"method": http.method, "url": http.url, "protocol": http.protocol,
                           "headers": [{"key": k, "value": v} for k, v in headers]}
    if kind != "REQUEST":
        out["code"] = http.code
    return out


def _dns(kind: str, dns: DnsRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"query": dns.query, "observation_source": dns.observation_source,
                           "qtypes": list(dns.qtypes)}
    if kind != "REQUEST":  # Hubble: a query carries only its question
        out.update(ips=list(dns.ips), ttl=dns.ttl, cnames=list(dns.cnames), rcode=dns.rcode,
                   rrtypes=list(dns.rrtypes))
    return out


def _go_quote(text: str) -> str:
    """Go's %q for the plain ASCII of addresses and names (json's escaping agrees there)."""
    return json.dumps(text)


def summary(record: AccessRecord) -> str:
    """Hubble's summary of an L7 flow (pkg/hubble/parser/seven: httpSummary, dnsSummary)."""
    if record.http is not None:
        http = record.http
        request = f"{http.method} {http.url}"
        if record.type == "REQUEST":
            return f"{http.protocol} {request}"
        if record.type == "RESPONSE":
            return f"{http.protocol} {http.code} {record.latency_ns // 1_000_000}ms ({request})"
        return ""
    if record.dns is not None:
        dns = record.dns
        qtypes = ",".join(dns.qtypes)
        if record.type == "REQUEST":
            return f"DNS Query {dns.query} {qtypes}"
        if record.type == "RESPONSE":
            if dns.rcode != 0:
                answer = f"RCode: {rcode_name(dns.rcode)}"
            else:
                parts = []
                if dns.ips:
                    parts.append(_go_quote(",".join(dns.ips)))
                if dns.cnames:
                    parts.append(f"CNAMEs: {_go_quote(','.join(dns.cnames))}")
                answer = " ".join(parts)
            source = "Proxy" if dns.observation_source == "proxy" else "Query"
            return f"DNS Answer {answer} TTL: {dns.ttl} ({source} {dns.query} {qtypes})"
    return ""
