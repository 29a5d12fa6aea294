"""Hubble's `http` and `httpV2` metrics (cilium pkg/hubble/metrics/http), on L7 HTTP flows.

- `http`: `hubble_http_requests_total{method,protocol,reporter}` per request,
  `hubble_http_responses_total{method,protocol,status,reporter}` per response and
  `hubble_http_request_duration_seconds{method,reporter}` (the response's latency).
- `httpV2`: responses only: `hubble_http_requests_total{method,protocol,status,reporter}` and the
  duration histogram; its source/destination contexts are those of the request (a response
  flow goes server -> client, so they are swapped back).

`reporter` is `client` for a flow judged on egress, `server` on ingress, else `unknown`;
`status` the code as a decimal number. The histogram has Prometheus' default buckets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cilia.hubble.metrics.families import DEFAULT_BUCKETS, Family, MultiHandler, Sample

_REQUESTS = "hubble_http_requests"
_DURATION = Family("hubble_http_request_duration_seconds", "Quantiles of HTTP request duration in seconds",
                   ("method", "reporter"), DEFAULT_BUCKETS)


def reporter(flow: Mapping[str, Any]) -> str:
    direction = flow.get("traffic_direction")
    return "client" if direction == "EGRESS" else "server" if direction == "INGRESS" else "unknown"


def _http(flow: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    l7 = flow.get("l7") or {}
    http = l7.get("http")
    return (str(l7.get("type") or ""), http) if http is not None else None


@dataclass(frozen=True)
class HttpHandler:
    name: str = "http"
    invert_context: bool = False
    families: tuple[Family, ...] = (
        Family(_REQUESTS, "Count of HTTP requests", ("method", "protocol", "reporter")),
        Family("hubble_http_responses", "Count of HTTP responses", ("method", "protocol", "status", "reporter")),
        _DURATION,
    )

    def configure(self, flags: frozenset[str]) -> MultiHandler:
        return self  # no flag options (exemplars are refused by the option parser)

    def samples(self, flow: Mapping[str, Any]) -> list[Sample]:
        found = _http(flow)
        if found is None:
            return []
        kind, http = found
        method, protocol, who = str(http.get("method", "")), str(http.get("protocol", "")), reporter(flow)
        if kind == "REQUEST":
            return [(0, (method, protocol, who), 1.0)]
        if kind == "RESPONSE":
            latency = int((flow.get("l7") or {}).get("latency_ns") or 0) / 1e9
            return [(1, (method, protocol, str(int(http.get("code") or 0)), who), 1.0),
                    (2, (method, who), latency)]
        return []


@dataclass(frozen=True)
class HttpV2Handler:
    name: str = "httpV2"
    invert_context: bool = True
    families: tuple[Family, ...] = (
        Family(_REQUESTS, "Count of HTTP requests", ("method", "protocol", "status", "reporter")),
        _DURATION,
    )

    def configure(self, flags: frozenset[str]) -> MultiHandler:
        return self  # no flag options (exemplars are refused by the option parser)

    def samples(self, flow: Mapping[str, Any]) -> list[Sample]:
        found = _http(flow)
        if found is None or found[0] != "RESPONSE":
            return []
        http = found[1]
        method, who = str(http.get("method", "")), reporter(flow)
        latency = int((flow.get("l7") or {}).get("latency_ns") or 0) / 1e9
        return [(0, (method, str(http.get("protocol", "")), str(int(http.get("code") or 0)), who), 1.0),
                (1, (method, who), latency)]
