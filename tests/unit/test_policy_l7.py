"""L7 HTTP rules: parsing and rejection, anchored matching, the REDIRECT map entries, the proxy's
rules file and verdicts, and the proxy's request handling under malformed input (hypothesis)."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.memory_stream import MemoryWriter

from cilia.identity.labels import LabelSet
from cilia.policy.cilium import parse_cilium_policy
from cilia.policy.errors import PolicyError
from cilia.policy.l7 import HttpRule
from cilia.policy.mapstate import ALLOW, REDIRECT, PeerIndex, compute_map_state, proxy_entries
from cilia.policy.resolve import resolve_endpoint
from cilia.policy.rules import Direction, IdentityView
from cilia.proxy.http import ConnInfo, serve_connection
from cilia.proxy.policy import (
    DENY_ALL,
    NO_RULES,
    EndpointPolicy,
    Parties,
    PolicyStore,
    Request,
    apply_mismatches,
    judge_request,
    remove_policy,
    write_policy,
)
from cilia.proxy.rulefiles import GENERATION, changed

STARWARS: dict[str, Any] = {
    "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "rule1", "namespace": "default"},
    "spec": {
        "endpointSelector": {"matchLabels": {"org": "empire", "class": "deathstar"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"org": "empire"}}],
                     "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                                  "rules": {"http": [{"method": "POST", "path": "/v1/request-landing"}]}}]}],
    },
}


def with_http(http: Any, **port: Any) -> dict[str, Any]:
    obj = copy.deepcopy(STARWARS)
    to_ports = obj["spec"]["ingress"][0]["toPorts"][0]
    to_ports["rules"] = {"http": http}
    to_ports["ports"][0].update(port)
    return obj


def req(method: str = "GET", path: str = "/", host: str = "", **headers: str) -> Request:
    return Request(method, path, host, {k.lower().replace("_", "-"): [v] for k, v in headers.items()})


def test_starwars_parses_into_an_l7_port() -> None:
    (rule,) = parse_cilium_policy(STARWARS)
    ((port, http),) = rule.ingress[0].l7
    assert (port.protocol, port.low, port.high) == (6, 80, 80)
    assert http == (HttpRule("POST", "/v1/request-landing"),)


@pytest.mark.parametrize(("http", "field", "reason"), [
    ([{"path": "/v1/(unclosed"}], "http[0].path", "invalid regular expression"),
    ([{"method": "[z-a]"}], "http[0].method", "invalid regular expression"),
    ([{"host": 5}], "http[0].host", "must be a string"),
    ([{"verb": "GET"}], "http[0].verb", "unknown field"),
    ([{"headers": ["bad header: x"]}], "http[0].headers[0]", "header name"),
    ([{"headers": [": x"]}], "http[0].headers[0]", "header name"),
    ([{"headerMatches": [{"name": "x", "mismatch": "DROP"}]}], "http[0].headerMatches[0].mismatch",
     "is not one of LOG, ADD, DELETE, REPLACE"),
    ([{"headerMatches": [{"name": "x y"}]}], "http[0].headerMatches[0].name", "not a header name"),
    ([{"headerMatches": [{"name": "x", "secret": {"name": "s"}}]}], "http[0].headerMatches[0].secret",
     "not supported yet"),
    ([{"headerMatches": [{"name": "x", "mismatch": "ADD"}]}], "http[0].headerMatches[0].value", "needs a value"),
    ([{"headerMatches": [{"name": "x", "valu": "1"}]}], "http[0].headerMatches[0].valu", "unknown field"),
    ([], "rules.http", "at least one"),
    ("GET", "rules.http", "must be a list"),
])
def test_bad_http_rules_are_rejected_with_field_and_reason(http: Any, field: str, reason: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_cilium_policy(with_http(http))
    assert field in str(info.value) and reason in str(info.value)
    assert "CiliumNetworkPolicy default/rule1" in str(info.value) or "rule1" in str(info.value)


@pytest.mark.parametrize(("change", "reason"), [
    (lambda o: o["spec"]["ingress"][0]["toPorts"][0]["ports"][0].update(protocol="UDP"), "numbered TCP port"),
    (lambda o: o["spec"]["ingress"][0]["toPorts"][0]["ports"][0].update(port="http"), "numbered TCP port"),
    (lambda o: o["spec"].update(ingressDeny=o["spec"].pop("ingress")), "deny rules"),
    (lambda o: o["spec"]["ingress"][0]["toPorts"][0]["rules"].update(dns=[{"matchName": "x"}]), "DNS"),
])
def test_l7_rules_where_they_do_not_work_yet_are_rejected(change: Any, reason: str) -> None:
    obj = copy.deepcopy(STARWARS)
    change(obj)
    with pytest.raises(PolicyError, match=reason):
        parse_cilium_policy(obj)


@pytest.mark.parametrize(("rule", "request_", "matches"), [
    (HttpRule("POST", "/v1/request-landing"), req("POST", "/v1/request-landing"), True),
    (HttpRule("POST", "/v1/request-landing"), req("POST", "/v1/request-landing/x"), False),  # anchored end
    (HttpRule("POST", "/v1/request-landing"), req("POST", "/x/v1/request-landing"), False),  # anchored start
    (HttpRule("POST", "/v1/request-landing"), req("POSTX", "/v1/request-landing"), False),
    (HttpRule("GET|HEAD", "/v1/.*"), req("HEAD", "/v1/a/b"), True),
    (HttpRule("", "/v1/.*"), req("DELETE", "/v1/"), True),
    (HttpRule(host="api\\.example\\.test"), req(host="api.example.test"), True),
    (HttpRule(host="api\\.example\\.test"), req(host="api.example.test.evil"), False),
    (HttpRule(headers=(("x-token", "abc"),)), req(X_Token="abc"), True),
    (HttpRule(headers=(("x-token", "abc"),)), req(X_Token="abcd"), False),
    (HttpRule(headers=(("x-token", None),)), req(X_Token="anything"), True),
    (HttpRule(headers=(("x-token", None),)), req(), False),
])
def test_matching_is_anchored_and_every_named_field_must_match(rule: HttpRule, request_: Request,
                                                               matches: bool) -> None:
    assert rule.matches(request_.method, request_.path, request_.host, request_.headers) is matches
    assert HttpRule.from_json(rule.to_json()) == rule


def test_header_matches_fail_the_rule_unless_a_mismatch_action_is_given() -> None:
    (rule,) = parse_cilium_policy(with_http([{"path": "/v1/.*", "headerMatches": [
        {"name": "X-Token", "value": "abc"}, {"name": "X-Trace", "mismatch": "LOG"},
        {"name": "X-Env", "value": "prod", "mismatch": "REPLACE"}, {"name": "X-Debug", "value": "1", "mismatch": "DELETE"},
        {"name": "X-Added", "value": "yes", "mismatch": "ADD"}]}]))
    (http,) = rule.ingress[0].l7[0][1]
    assert HttpRule.from_json(http.to_json()) == http
    assert not http.matches("GET", "/v1/x", "", {"x-env": ["dev"]})  # X-Token missing, no action: no match
    assert not http.matches("GET", "/v1/x", "", {"x-token": ["abd"]})
    ok = {"x-token": ["abc"], "x-env": ["dev"], "x-debug": ["0"]}
    assert http.matches("GET", "/v1/x", "", ok)
    assert http.mismatches(ok) == [("X-Trace", "", "LOG"), ("X-Env", "prod", "REPLACE"), ("X-Debug", "1", "DELETE"),
                                   ("X-Added", "yes", "ADD")]
    assert http.mismatches({**ok, "x-trace": ["1"], "x-env": ["prod"], "x-debug": ["1"], "x-added": ["yes"]}) == []


def test_mismatch_actions_change_what_is_forwarded() -> None:
    headers = [(b"Host", b"d"), (b"X-Env", b"dev"), (b"x-debug", b"0"), (b"X-Debug", b"2")]
    out = apply_mismatches(headers, [("X-Trace", "", "LOG"), ("X-Env", "prod", "REPLACE"), ("X-Debug", "1", "DELETE"),
                                     ("X-Added", "yes", "ADD")])
    assert out == [(b"Host", b"d"), (b"X-Env", b"prod"), (b"X-Added", b"yes")]


def test_forwarded_request_carries_the_mismatch_actions() -> None:
    rule = HttpRule("POST", "/v1/request-landing", header_matches=(("X-Env", "prod", "REPLACE"), ("X-Log", "", "LOG")))
    policy = EndpointPolicy.from_json({"version": 2, "egress": [], "ingress": [
        {"rule_id": 1, "identities": None, "ports": [{"protocol": 6, "low": 80, "high": 80, "http": [rule.to_json()]}]}]})
    verdict = policy.judge(300, 6, 80, req("POST", "/v1/request-landing", X_Env="dev"))
    assert verdict.allowed and verdict.mismatches == (("X-Env", "prod", "REPLACE"), ("X-Log", "", "LOG"))
    got, upstream = _run(b"POST /v1/request-landing HTTP/1.1\r\nHost: d\r\nX-Env: dev\r\nContent-Length: 0\r\n\r\n",
                         policy=policy)
    assert got.startswith(b"HTTP/1.1 200 ") and b"X-Env: prod\r\n" in upstream and b"dev" not in upstream


def test_header_rules_parse_name_value_form() -> None:
    (rule,) = parse_cilium_policy(with_http([{"headers": ["X-Token: abc", "X-Present"]}]))
    assert rule.ingress[0].l7[0][1] == (HttpRule(headers=(("x-token", "abc"), ("x-present", None))),)


def _state(*extra_ingress: dict[str, Any]) -> Any:
    obj = copy.deepcopy(STARWARS)
    obj["spec"]["ingress"] += list(extra_ingress)
    rules = parse_cilium_policy(obj)
    rules = [r.__class__(**{**r.__dict__, "ingress": tuple(e.__class__(**{**e.__dict__, "rule_id": 10 + i})
                                                             for i, e in enumerate(r.ingress))}) for r in rules]
    labels = LabelSet.parse_many(["k8s:org=empire", "k8s:class=deathstar", "k8s:io.kubernetes.pod.namespace=default"])
    fighter = IdentityView(300, LabelSet.parse_many(["k8s:org=empire", "k8s:io.kubernetes.pod.namespace=default"]))
    xwing = IdentityView(301, LabelSet.parse_many(["k8s:org=alliance", "k8s:io.kubernetes.pod.namespace=default"]))
    policy = resolve_endpoint(rules, labels)
    return compute_map_state(policy, PeerIndex([fighter, xwing])), policy


def test_l7_port_is_a_redirect_entry_and_others_stay_denied() -> None:
    state, _ = _state()
    assert state.lookup(Direction.INGRESS, 300, 6, 80).redirect
    assert state.lookup(Direction.INGRESS, 300, 6, 80).passes
    assert not state.lookup(Direction.INGRESS, 301, 6, 80).passes  # L3 still decides who connects
    assert not state.lookup(Direction.INGRESS, 300, 6, 81).passes
    verdicts = {v.verdict for v in state.ingress.ports.values()}
    assert verdicts == {REDIRECT}
    (entry,) = state.proxy.ingress
    assert state.proxy.egress == ()
    assert entry.identities == (300,) and entry.ports[0].http == (HttpRule("POST", "/v1/request-landing").to_json(),)


def test_plain_allow_on_the_same_port_needs_no_redirect_and_proxy_allows_all_for_it() -> None:
    plain = {"fromEndpoints": [{"matchLabels": {"org": "empire"}}],
             "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}
    state, policy = _state(plain)
    assert {v.verdict for v in state.ingress.ports.values()} == {ALLOW}
    assert not state.lookup(Direction.INGRESS, 300, 6, 80).redirect
    entries = proxy_entries(policy.ingress, PeerIndex([IdentityView(300, LabelSet.parse_many(
        ["k8s:org=empire", "k8s:io.kubernetes.pod.namespace=default"]))]))
    judged = EndpointPolicy.from_json({"version": 2, "ingress": [e.to_json() for e in entries], "egress": []})
    assert judged.judge(300, 6, 80, req("PUT", "/v1/exhaust-port")).allowed


def test_deny_wins_over_l7_allow() -> None:
    obj = copy.deepcopy(STARWARS)
    obj["spec"]["ingressDeny"] = [{"fromEndpoints": [{"matchLabels": {"org": "empire"}}]}]
    rules = parse_cilium_policy(obj)
    assert rules[0].ingress and rules[0].ingress[-1].deny
    labels = LabelSet.parse_many(["k8s:org=empire", "k8s:class=deathstar", "k8s:io.kubernetes.pod.namespace=default"])
    rules = [r.__class__(**{**r.__dict__, "ingress": tuple(e.__class__(**{**e.__dict__, "rule_id": 10 + i})
                                                             for i, e in enumerate(r.ingress))}) for r in rules]
    fighter = IdentityView(300, LabelSet.parse_many(["k8s:org=empire", "k8s:io.kubernetes.pod.namespace=default"]))
    denied = compute_map_state(resolve_endpoint(rules, labels), PeerIndex([fighter]))
    assert not denied.lookup(Direction.INGRESS, 300, 6, 80).passes


def test_rules_file_round_trip_and_fail_closed(tmp_path: Path) -> None:
    state, _ = _state()
    store = PolicyStore(tmp_path)
    assert not store.get(7).judge(300, 6, 80, req("POST", "/v1/request-landing")).allowed  # no file: deny
    write_policy(tmp_path, 7, state.proxy)
    policy = store.get(7)
    assert policy.judge(300, 6, 80, req("POST", "/v1/request-landing")).allowed
    assert not policy.judge(300, 6, 80, req("PUT", "/v1/exhaust-port")).allowed
    assert not policy.judge(301, 6, 80, req("POST", "/v1/request-landing")).allowed
    (tmp_path / "7.json").write_text("{not json")
    changed(tmp_path)  # a file written by hand: the proxy looks again once the generation moved
    assert not store.get(7).judge(300, 6, 80, req("POST", "/v1/request-landing")).allowed


def test_rules_change_applies_to_the_next_request_without_a_stat_per_request(tmp_path: Path) -> None:
    """The store stats an endpoint's file only after the directory's generation moved: a change
    through write_policy / remove_policy applies at the very next get, with no time between."""
    state, _ = _state()
    store = PolicyStore(tmp_path)
    landing = req("POST", "/v1/request-landing")
    write_policy(tmp_path, 7, state.proxy)
    assert store.get(7).judge(300, 6, 80, landing).allowed
    (tmp_path / "7.json").write_text("{not json")  # behind the store's back: not looked at...
    assert store.get(7).judge(300, 6, 80, landing).allowed
    write_policy(tmp_path, 7, state.proxy)  # ...until the next change through the agent's functions
    rewritten = store.get(7)
    assert rewritten.judge(300, 6, 80, landing).allowed and store.get(7) is rewritten
    remove_policy(tmp_path, 7)
    assert store.get(7) is NO_RULES  # removed: the next request already sees no rules
    write_policy(tmp_path, 7, state.proxy)
    assert store.get(7).judge(300, 6, 80, landing).allowed
    good = (tmp_path / "7.json").read_text()
    (tmp_path / "7.json").write_text("{not json")
    changed(tmp_path)
    assert store.get(7) is DENY_ALL
    (tmp_path / "7.json").write_text(good)  # an unreadable file is not remembered: read again next time
    assert store.get(7).judge(300, 6, 80, landing).allowed


def test_rules_directory_recreated_is_noticed(tmp_path: Path) -> None:
    """The generation file replaced (its directory removed and made again): the store maps the new
    one within REVALIDATE_S, and then follows its changes again."""
    state, _ = _state()
    directory = tmp_path / "rules"
    store = PolicyStore(directory)
    write_policy(directory, 7, state.proxy)
    assert store.get(7).judge(300, 6, 80, req("POST", "/v1/request-landing")).allowed
    (directory / "7.json").unlink()
    (directory / GENERATION).unlink()
    directory.rmdir()
    write_policy(directory, 7, state.proxy)  # a new directory, a new generation file...
    remove_policy(directory, 7)  # ...and its change, which the old mapping does not show
    store._next_check = 0.0  # what REVALIDATE_S later means
    assert store.get(7) is NO_RULES


# ----- the proxy's connection handling, end to end over in-memory streams ----------------------------
ALLOW_LANDING = EndpointPolicy.from_json({"version": 2, "egress": [], "ingress": [
    {"rule_id": 1, "identities": None, "ports": [
        {"protocol": 6, "low": 80, "high": 80, "http": [HttpRule("POST", "/v1/request-landing").to_json()]}]}]})
PARTIES = Parties(300, 400, 3, 7, 6, 80)


class _Store:
    def __init__(self, policy: EndpointPolicy = ALLOW_LANDING) -> None:
        self.policy = policy

    def get(self, endpoint_id: int) -> EndpointPolicy:
        return self.policy if endpoint_id == 7 else NO_RULES


def _run(raw: bytes, upstream_answer: bytes = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
         policy: EndpointPolicy | None = None) -> tuple[bytes, bytes]:
    """Feed `raw` as the client; returns (what the client got, what the server got)."""
    async def go() -> tuple[bytes, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        writer = MemoryWriter()
        up_writer = MemoryWriter()

        async def open_upstream() -> Any:
            up_reader = asyncio.StreamReader()
            up_reader.feed_data(upstream_answer * 64)
            return up_reader, up_writer

        store = _Store() if policy is None else _Store(policy)
        info = ConnInfo(lambda request: judge_request(store, PARTIES, request))  # type: ignore[arg-type]
        await asyncio.wait_for(serve_connection(reader, writer, info, open_upstream, idle_timeout=1,  # type: ignore[arg-type]
                                                upstream_timeout=1), 5)
        assert writer.closed
        return bytes(writer.data), bytes(up_writer.data)

    return asyncio.run(go())


def test_keepalive_allowed_then_denied_then_allowed() -> None:
    landing = b"POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 0\r\n\r\n"
    exhaust = b"PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 0\r\n\r\n"
    got, upstream = _run(landing + exhaust + landing)
    assert got.count(b"HTTP/1.1 200 OK") == 2 and got.count(b"HTTP/1.1 403 ") == 1
    assert b"Access denied" in got
    assert upstream.count(b"POST /v1/request-landing") == 2 and b"exhaust-port" not in upstream
    assert b"Host: deathstar" in upstream  # forwarded with its header names' case


def test_oversized_head_gets_431_and_is_not_forwarded() -> None:
    got, upstream = _run(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 431 ") and upstream == b""


def test_malformed_request_line_gets_400() -> None:
    got, upstream = _run(b"NOT A REQUEST\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 400 ") and upstream == b""


_LINES = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda m, p, h: b"%s %s HTTP/1.1\r\n%s\r\n" % (m, p, h),
              st.sampled_from([b"GET", b"POST", b"PUT", b"", b"G\x00T", b"POST "]),
              st.sampled_from([b"/v1/request-landing", b"/", b"", b"/\r", b"*", b"/v1/request-landing?x"]),
              st.sampled_from([b"Host: d\r\n", b"Content-Length: 3\r\n", b"Content-Length: -1\r\n",
                               b"Transfer-Encoding: chunked\r\n", b"Bad Header\r\n", b"", b"X: " + b"y" * 20000
                               + b"\r\n"])),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_LINES, max_size=4))
def test_fuzzed_requests_are_answered_or_closed_and_denied_never_forwarded(parts: list[bytes]) -> None:
    got, upstream = _run(b"".join(parts))
    # every answer is a well-formed status line; nothing but the allowed request reaches the server
    for line in got.split(b"\r\n"):
        if line.startswith(b"HTTP/"):
            assert line[9:12].isdigit()
    for line in upstream.split(b"\r\n"):
        if line.endswith(b"HTTP/1.1") and b" " in line:
            assert line.startswith(b"POST /v1/request-landing ")
