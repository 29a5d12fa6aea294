"""What cilia-proxy reports of the requests it judged: an access-log record per request and per
answer (cilia.proxy.accesslog, to the agent, which makes L7 flows of them), and counts by verdict
that the proxy logs."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Literal

from cilia.proxy.accesslog import AccessLogSender, FlowEncoder, record
from cilia.proxy.policy import Judgement, Request
from cilia.proxy.transparent import Connection

log = logging.getLogger(__name__)


class RequestCounter:
    """Requests by verdict (FORWARDED / DROPPED / AUDIT), over the proxy's life."""

    def __init__(self) -> None:
        self.by_verdict: Counter[str] = Counter()

    def summary(self) -> str:
        return ", ".join(f"{v} {n}" for v, n in sorted(self.by_verdict.items())) or "none"


class AccessLog:
    """An Observer (cilia.proxy.http) for one connection: records to the agent, counts."""

    def __init__(self, conn: Connection, sender: AccessLogSender | None, counter: RequestCounter) -> None:
        self.conn = conn
        self.sender = sender
        self.counter = counter
        p = conn.parties
        self.encoder = FlowEncoder(conn.client_ip, conn.client_port, conn.server_ip, conn.server_port,
                                   p.client_identity, p.server_identity)
        # the record bodies (FlowEncoder.body) of the last request and judgement, by kind: a client
        # repeating its request (the same Request object, http1fast's kept head; the same Judgement,
        # ConnectionJudge's memo) has the same bodies
        self._request: Request | None = None
        self._judgement: Judgement | None = None
        self._bodies: dict[str, bytes] = {}

    def request(self, request: Request, judgement: Judgement) -> None:
        self.counter.by_verdict[judgement.verdict] += 1
        if judgement.verdict == "AUDIT":  # policy-audit-mode: what enforcing would have denied
            log.info("AUDIT %s %s from %s (identity %d): forwarded, would be denied by endpoint %d's %s",
                     request.method, request.url, self.conn.client_ip, self.conn.parties.client_identity,
                     judgement.endpoint_id, "ingress" if judgement.ingress else "egress")
        if judgement.mismatches:
            log.info("%s %s from %s: headerMatches mismatch %s", request.method, request.url, self.conn.client_ip,
                     ", ".join(f"{n} ({a})" for n, _v, a in judgement.mismatches))
        # a denied request's only record carries the 403 it was answered with (as Cilium's access log)
        self._send("REQUEST", request, judgement, 0 if judgement.forward else 403, 0)

    def response(self, request: Request, judgement: Judgement, code: int, latency_ns: int) -> None:
        self._send("RESPONSE", request, judgement, code, latency_ns)

    def _send(self, kind: Literal["REQUEST", "RESPONSE"], request: Request, judgement: Judgement, code: int,
              latency_ns: int) -> None:
        if self.sender is None:
            return
        if request is not self._request or judgement is not self._judgement:
            self._request, self._judgement = request, judgement
            self._bodies.clear()
        body = self._bodies.get(kind)
        if body is None:
            body = self._bodies[kind] = self.encoder.body(
                kind, judgement.verdict, judgement.endpoint_id, judgement.ingress, judgement.policies,
                "; ".join(f"headerMatches mismatch {n}: {a}" for n, _v, a in judgement.mismatches)
                if judgement.mismatches else "",
                request.method, request.url, request.protocol, request.header_list if kind == "REQUEST" else ())
        # hand-built, the body kept for a repeated request (a dataclass and json.dumps cost ~50 µs a
        # record, two records a request); sent with the others of FLUSH_DELAY (send_soon): a sendto
        # costs more than the encoding
        self.sender.send_soon(record(body, time.time_ns(), latency_ns, code))
