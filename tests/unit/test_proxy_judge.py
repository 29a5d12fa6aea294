"""cilia-proxy's verdicts across both sides (the client's egress, the server's ingress), audit mode,
fail-closed cases, and the access-log records every judged request produces (request with verdict
and the deciding policy, response with code and latency)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

from cilia.policy.l7 import HttpRule
from cilia.proxy.accesslog import FLUSH_DELAY, AccessLogSender, PolicyRef, decode
from cilia.proxy.http import ConnInfo, serve_connection
from cilia.proxy.observe import AccessLog, RequestCounter
from cilia.proxy.policy import (
    DENY_ALL,
    NO_RULES,
    ConnectionJudge,
    EndpointPolicy,
    Parties,
    PolicyStore,
    Request,
    judge_request,
)
from cilia.proxy.rulefiles import changed, write_rules_file
from cilia.proxy.transparent import Connection

RULE1 = {"kind": "CiliumNetworkPolicy", "namespace": "default", "name": "rule1"}
EGRESS = {"kind": "CiliumNetworkPolicy", "namespace": "default", "name": "out"}


def _port(*rules: HttpRule) -> dict[str, Any]:
    return {"protocol": 6, "low": 80, "high": 80, "http": [r.to_json() for r in rules] if rules else None}


def _policy(ingress: list[dict[str, Any]] | None = None, egress: list[dict[str, Any]] | None = None,
            audit: bool = False) -> EndpointPolicy:
    return EndpointPolicy.from_json({"version": 2, "audit": audit, "ingress": ingress or [], "egress": egress or []})


SERVER = _policy(ingress=[{"rule_id": 1, "identities": [300], "policy": RULE1,
                           "ports": [_port(HttpRule("POST", "/v1/request-landing"))]}])
CLIENT = _policy(egress=[{"rule_id": 2, "identities": [400], "policy": EGRESS,
                          "ports": [_port(HttpRule("", "/v1/.*"))]}])
PARTIES = Parties(client_identity=300, server_identity=400, client_endpoint=3, server_endpoint=7, protocol=6, port=80)


class Store:
    def __init__(self, **by_id: EndpointPolicy) -> None:
        self.by_id = {int(k[1:]): v for k, v in by_id.items()}

    def get(self, endpoint_id: int) -> EndpointPolicy:
        return self.by_id.get(endpoint_id, NO_RULES)

    def stamp(self) -> bytes | None:
        return None  # its rules change without a generation: every request gets them


def req(method: str, path: str) -> Request:
    return Request(method, path, "deathstar", {}, "HTTP/1.1", (("Host", "deathstar"),))


def test_server_ingress_alone_decides_and_names_its_policy() -> None:
    store = Store(e7=SERVER)
    ok = judge_request(store, PARTIES, req("POST", "/v1/request-landing"))  # type: ignore[arg-type]
    assert (ok.verdict, ok.policies, ok.endpoint_id, ok.ingress) == ("FORWARDED", (PolicyRef(**RULE1),), 7, True)
    no = judge_request(store, PARTIES, req("PUT", "/v1/exhaust-port"))  # type: ignore[arg-type]
    assert (no.verdict, no.policies, no.endpoint_id, no.ingress) == ("DROPPED", (PolicyRef(**RULE1),), 7, True)
    other = judge_request(store, Parties(301, 400, 3, 7, 6, 80), req("POST", "/v1/request-landing"))  # type: ignore[arg-type]
    assert other.verdict == "DROPPED" and other.policies == ()  # no entry names identity 301


def test_both_sides_must_allow_egress_first() -> None:
    store = Store(e3=CLIENT, e7=SERVER)
    both = judge_request(store, PARTIES, req("POST", "/v1/request-landing"))  # type: ignore[arg-type]
    assert both.verdict == "FORWARDED" and both.policies == (PolicyRef(**EGRESS), PolicyRef(**RULE1))
    by_egress = judge_request(store, PARTIES, req("POST", "/other"))  # type: ignore[arg-type]
    assert (by_egress.verdict, by_egress.endpoint_id, by_egress.ingress) == ("DROPPED", 3, False)
    by_ingress = judge_request(store, PARTIES, req("GET", "/v1/x"))  # type: ignore[arg-type]
    assert (by_ingress.verdict, by_ingress.endpoint_id, by_ingress.ingress) == ("DROPPED", 7, True)


def test_audit_forwards_and_says_audit() -> None:
    audited = _policy(ingress=[{"rule_id": 1, "identities": None, "policy": RULE1,
                                "ports": [_port(HttpRule("POST", "/v1/request-landing"))]}], audit=True)
    store = Store(e7=audited)
    assert judge_request(store, PARTIES, req("PUT", "/v1/exhaust-port")).verdict == "AUDIT"  # type: ignore[arg-type]
    assert judge_request(store, PARTIES, req("POST", "/v1/request-landing")).verdict == "FORWARDED"  # type: ignore[arg-type]


def test_fail_closed_without_rules_or_with_broken_rules() -> None:
    assert judge_request(Store(), PARTIES, req("GET", "/")).verdict == "DROPPED"  # type: ignore[arg-type]
    assert judge_request(Store(e7=DENY_ALL), PARTIES, req("GET", "/")).verdict == "DROPPED"  # type: ignore[arg-type]
    # a broken client file denies even when the server's rules would allow
    broken = Store(e3=DENY_ALL, e7=SERVER)
    assert judge_request(broken, PARTIES, req("POST", "/v1/request-landing")).verdict == "DROPPED"  # type: ignore[arg-type]


def test_connection_judge_gives_judge_requests_verdicts_with_the_current_rules() -> None:
    """ConnectionJudge remembers verdicts by (method, path, host) only while both sides' rules are
    the same objects and name no headers: a change of rules applies to the next request, and
    with header rules every request is matched."""
    store = Store(e3=CLIENT, e7=SERVER)
    judge = ConnectionJudge(store, PARTIES)  # type: ignore[arg-type]
    cases = [req("POST", "/v1/request-landing"), req("POST", "/other"), req("GET", "/v1/x"),
             req("POST", "/v1/request-landing"), Request("POST", "/v1/request-landing", "other", {}, "HTTP/1.1", ())]
    for request in cases * 2:
        assert judge(request) == judge_request(store, PARTIES, request)  # type: ignore[arg-type]
    assert judge(cases[0]).verdict == "FORWARDED"
    store.by_id[7] = _policy(ingress=[{"rule_id": 1, "identities": [300], "policy": RULE1,
                                       "ports": [_port(HttpRule("POST", "/v1/other"))]}])
    assert judge(cases[0]).verdict == "DROPPED"  # the next request: the new rules
    store.by_id[7] = _policy(ingress=[{"rule_id": 1, "identities": [300], "policy": RULE1,
                                       "ports": [_port(HttpRule("POST", "/v1/.*", headers=(("x-ok", None),)))]}])
    with_header = Request("POST", "/v1/request-landing", "deathstar", {"x-ok": ["1"]}, "HTTP/1.1", ())
    without = Request("POST", "/v1/request-landing", "deathstar", {}, "HTTP/1.1", ())
    for _ in range(2):  # same (method, path, host), other headers: each judged by its headers
        assert judge(with_header).verdict == "FORWARDED" and judge(without).verdict == "DROPPED"


def test_connection_judge_on_rules_files_sees_each_change_at_the_next_request(tmp_path: Path) -> None:
    """With a real store the judge keeps both sides' rules while the generation stays (no lookup per
    request); a file written (write_rules_file: rename, then the generation) applies to the very next
    request, and a broken file is read again at every request (fail closed until it parses)."""
    def rules(path: str) -> dict[str, Any]:
        entry = {"rule_id": 1, "identities": [300], "policy": RULE1, "ports": [_port(HttpRule("POST", path))]}
        return {"ingress": [entry], "egress": [], "audit": False}

    write_rules_file(tmp_path, 7, 2, rules("/v1/.*"))
    judge = ConnectionJudge(PolicyStore(tmp_path), PARTIES)
    landing = req("POST", "/v1/request-landing")
    assert [judge(landing).verdict for _ in range(3)] == ["FORWARDED"] * 3
    write_rules_file(tmp_path, 7, 2, rules("/v2/.*"))
    assert judge(landing).verdict == "DROPPED"
    (tmp_path / "7.json").write_text("{not json")
    changed(tmp_path)
    assert [judge(req("POST", "/v2/x")).verdict for _ in range(2)] == ["DROPPED"] * 2  # broken: denied
    (tmp_path / "7.json").write_text(json.dumps({"version": 2, "endpoint_id": 7, **rules("/v2/.*")}))
    assert judge(req("POST", "/v2/x")).verdict == "FORWARDED"  # read again: no generation change needed


class _Writer:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None


def test_every_judged_request_is_in_the_access_log(tmp_path: Path) -> None:
    path = tmp_path / "accesslog.sock"
    agent = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    agent.bind(str(path))
    agent.setblocking(False)
    sender = AccessLogSender(path)
    counter = RequestCounter()
    conn = Connection("10.200.1.3", 40000, "10.200.1.2", 80, PARTIES)
    landing = b"POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 0\r\n\r\n"
    exhaust = b"PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 0\r\n\r\n"

    async def go() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(landing + exhaust)
        reader.feed_eof()

        async def upstream() -> Any:
            up = asyncio.StreamReader()
            up.feed_data(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok")
            return up, _Writer()

        info = ConnInfo(lambda r: judge_request(Store(e7=SERVER), PARTIES, r),  # type: ignore[arg-type]
                        AccessLog(conn, sender, counter))
        await serve_connection(reader, _Writer(), info, upstream, idle_timeout=1)  # type: ignore[arg-type]
        await asyncio.sleep(FLUSH_DELAY * 5)  # the records of FLUSH_DELAY go out together

    asyncio.run(go())
    records = []
    while True:
        try:
            records += [decode(part) for part in agent.recv(65536).split(b"\n")]  # a datagram: one or more
        except BlockingIOError:
            break
    assert [(r.type, r.verdict, r.http.method if r.http else "", r.http.code if r.http else -1) for r in records] == [
        ("REQUEST", "FORWARDED", "POST", 0), ("RESPONSE", "FORWARDED", "POST", 201), ("REQUEST", "DROPPED", "PUT", 403)]
    first = records[0]
    assert first.policies == [PolicyRef(**RULE1)] and first.http is not None
    assert first.http.url == "http://deathstar/v1/request-landing" and first.http.protocol == "HTTP/1.1"
    assert ("Host", "deathstar") in first.http.headers
    assert (first.source_ip, first.source_port, first.destination_ip, first.destination_port) == (
        "10.200.1.3", 40000, "10.200.1.2", 80)
    assert (first.source_identity, first.destination_identity, first.endpoint_id, first.ingress) == (300, 400, 7, True)
    assert records[1].latency_ns > 0 and records[2].policies == [PolicyRef(**RULE1)]
    assert counter.by_verdict == {"FORWARDED": 1, "DROPPED": 1} and sender.sent == 3
    agent.close()
    sender.close()
